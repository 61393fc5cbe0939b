"""Ferry's lab: several libvirt compute nodes on one Linux machine (see README.md)."""
