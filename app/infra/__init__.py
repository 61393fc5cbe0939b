"""The thin layer that talks to compute nodes: SSH (Fabric) and libvirt. Only services import it."""
