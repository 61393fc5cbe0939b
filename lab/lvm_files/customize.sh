#!/bin/sh
# mmdebstrap customize hook for the lab's LVM node image; $1 is the root tree.
# Everything instance-specific (address, host key, authorized key, libvirt identity) arrives
# at boot on a small seed disk (/dev/vdc) that ferry-seed.service copies over /.
set -eu
R="$1"

echo lvm-node > "$R/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$R/etc/fstab"
# Host keys are per instance (seed disk); the image must not carry any.
rm -f "$R"/etc/ssh/ssh_host_*
cat > "$R/etc/ssh/sshd_config.d/ferry-lab.conf" <<'CONF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 200:30:400
MaxSessions 200
PrintMotd no
PrintLastLog no
# No PAM: a login then starts no logind session and no user manager (6 s each under TCG).
UsePAM no
CONF

# Boot time: an initramfs with every module took 11 s to unpack and 22 s to probe under
# TCG; the root disk needs only these.
sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n' >> "$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all

cat > "$R/usr/local/sbin/ferry-seed" <<'SH'
#!/bin/sh
# Copy the instance's files from the seed disk over the root tree.
set -eu
mkdir -p /run/ferry-seed
mount -o ro /dev/vdc /run/ferry-seed
cp -a /run/ferry-seed/tree/. /
umount /run/ferry-seed
chmod 700 /root/.ssh
SH
cat > "$R/usr/local/sbin/ferry-lvm" <<'SH'
#!/bin/sh
# Make the volume group and thin pool on the second disk the first time; activate it always.
set -eu
. /etc/ferry-lab/lvm.env
udevadm settle --timeout=20 || true
if ! vgs "$VG" >/dev/null 2>&1; then
    pvcreate -ff -y /dev/vdb
    vgcreate "$VG" /dev/vdb
    lvcreate --yes --type thin-pool -L "$THIN_POOL_SIZE" -n "$THIN_POOL" "$VG"
fi
vgchange -ay "$VG"
SH
chmod 755 "$R/usr/local/sbin/ferry-seed" "$R/usr/local/sbin/ferry-lvm"
mkdir -p "$R/etc/ferry-lab"
printf 'VG=ferry\nTHIN_POOL=thinpool\nTHIN_POOL_SIZE=6G\n' > "$R/etc/ferry-lab/lvm.env"

cat > "$R/etc/systemd/system/ferry-seed.service" <<'UNIT'
[Unit]
Description=Ferry lab: apply the instance seed disk
DefaultDependencies=no
After=local-fs.target
Before=network-pre.target systemd-networkd.service ssh.service libvirtd.service sysinit.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ferry-seed

[Install]
WantedBy=sysinit.target
UNIT
cat > "$R/etc/systemd/system/ferry-lvm.service" <<'UNIT'
[Unit]
Description=Ferry lab: volume group and thin pool on /dev/vdb
After=ferry-seed.service systemd-udevd.service
Before=libvirtd.service ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ferry-lvm

[Install]
WantedBy=multi-user.target
UNIT

# libvirt: always running (Debian's default exits after 120 s idle), no default network
# (it needs dnsmasq), a dir pool like the namespace nodes and a logical pool on the VG.
echo 'LIBVIRTD_ARGS=""' > "$R/etc/default/libvirtd"
rm -f "$R/etc/libvirt/qemu/networks/autostart/default.xml"
mkdir -p "$R/etc/libvirt/storage/autostart" "$R/var/lib/libvirt/images" "$R/var/lib/ferry/backups"
echo "<pool type='dir'><name>default</name><target><path>/var/lib/libvirt/images</path></target></pool>" \
    > "$R/etc/libvirt/storage/default.xml"
echo "<pool type='logical'><name>ferry</name><source><name>ferry</name><format type='lvm2'/></source><target><path>/dev/ferry</path></target></pool>" \
    > "$R/etc/libvirt/storage/ferry.xml"
ln -sf /etc/libvirt/storage/default.xml "$R/etc/libvirt/storage/autostart/default.xml"
ln -sf /etc/libvirt/storage/ferry.xml "$R/etc/libvirt/storage/autostart/ferry.xml"

chroot "$R" systemctl enable systemd-networkd.service ferry-seed.service ferry-lvm.service \
    ssh.service libvirtd.service virtlogd.service
# Boot time: e2scrub_reap alone took 23 s under TCG, networkd's wait-online 10 s; the
# timers would only spend CPU the other agents on this machine need.
chroot "$R" systemctl mask e2scrub_reap.service systemd-networkd-wait-online.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    dpkg-db-backup.timer logrotate.timer man-db.timer
