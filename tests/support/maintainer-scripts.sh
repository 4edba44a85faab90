#!/bin/sh
# The pmtr package's maintainer scripts through install, upgrade, remove and purge, in the order
# dpkg runs them, on a private copy of this machine's /etc and /var/lib: run by tests/packages.rs
# as root inside `unshare --mount` (nothing here reaches the real system).
#
#   maintainer-scripts.sh CONTROL_DIR DATA_DIR WORK_DIR MODE
#
# CONTROL_DIR holds the package's DEBIAN files, DATA_DIR its extracted files. MODE `container`:
# neither systemd nor udev runs (as in a chroot or a container). MODE `pi`: /run says that both
# run, and fake systemctl, deb-systemd-invoke and udevadm log what they are asked to do instead.
# systemctl calls with --root= (deb-systemd-helper enabling the unit offline) go to the real one.
# After each step WORK_DIR/state.STEP holds key=value lines; WORK_DIR/out.STEP the script's output.
set -eu
ctrl=$1 data=$2 w=$3 mode=$4

# The private system: copies of /etc, /var/lib's few files the scripts use and the system's units,
# an empty /run.
cp -a /etc "$w/etc"
mount --bind "$w/etc" /etc
mkdir -p "$w/var-lib/dpkg" "$w/var-lib/systemd"
if [ -f /var/lib/dpkg/statoverride ]; then cp /var/lib/dpkg/statoverride "$w/var-lib/dpkg/"; fi
mount --bind "$w/var-lib" /var/lib
mount -t tmpfs tmpfs /run
mkdir -p "$w/units"
cp -a /lib/systemd/system/. "$w/units/"
mount --bind "$w/units" /lib/systemd/system
# Whatever an earlier install left in the copy goes first.
if getent passwd pmtr >/dev/null; then userdel pmtr; fi
if getent group pmtr >/dev/null; then groupdel pmtr; fi
rm -rf /etc/pmtr /etc/systemd/system/pmtr.service /etc/systemd/system/multi-user.target.wants/pmtr.service

log=$w/calls.log
: >"$log"
mkdir -p "$w/bin"
for tool in systemctl deb-systemd-invoke udevadm; do
    cat >"$w/bin/$tool" <<EOF
#!/bin/sh
case " \$* " in
*" --root="*) exec /usr/bin/$tool "\$@" ;;
esac
echo "$tool \$*" >>"$log"
EOF
    chmod 755 "$w/bin/$tool"
done
PATH=$w/bin:$PATH
export PATH
if [ "$mode" = pi ]; then
    mkdir -p /run/systemd/system /run/udev
    python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' /run/udev/control
fi
gpio_before=$(getent group gpio || echo none)

# The files dpkg unpacks (the ones the scripts touch).
unpack() {
    mkdir -p /etc/pmtr
    [ -e /etc/pmtr/pmtr.toml ] || cp "$data/etc/pmtr/pmtr.toml" /etc/pmtr/pmtr.toml
    cp "$data/lib/systemd/system/pmtr.service" /lib/systemd/system/pmtr.service
}

# What the administrator does with `systemctl enable|disable pmtr` (offline, as systemd is not
# running here).
admin() {
    if [ -x /usr/bin/systemctl ]; then
        /usr/bin/systemctl --root=/ --quiet "$1" pmtr.service
    elif [ "$1" = enable ]; then
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /lib/systemd/system/pmtr.service /etc/systemd/system/multi-user.target.wants/pmtr.service
    else
        rm -f /etc/systemd/system/multi-user.target.wants/pmtr.service
    fi
}

# The state after step $1.
record() {
    {
        echo "gpio_before=$gpio_before"
        echo "passwd=$(getent passwd pmtr || echo none)"
        echo "groups=$(id -nG pmtr 2>/dev/null || echo none)"
        echo "group_pmtr=$(getent group pmtr || echo none)"
        echo "group_gpio=$(getent group gpio || echo none)"
        echo "conf=$(stat -c '%U:%G %a' /etc/pmtr/pmtr.toml 2>/dev/null || echo none)"
        echo "wants=$(readlink /etc/systemd/system/multi-user.target.wants/pmtr.service || echo none)"
        echo "mask=$(readlink /etc/systemd/system/pmtr.service || echo none)"
        echo "state_dir=$(if [ -e /var/lib/pmtr ]; then echo yes; else echo no; fi)"
        echo "calls=$(grep -v -e ' is-enabled ' -e ' is-active ' "$log" | tr '\n' ';')"
    } >"$w/state.$1"
    : >"$log"
}

# Runs maintainer script $2 with the rest as arguments, as dpkg does (its environment, an
# empty stdin), its output into out.$1.
run() {
    step=$1 script=$2
    shift 2
    DPKG_MAINTSCRIPT_PACKAGE=pmtr DPKG_MAINTSCRIPT_NAME=$script DPKG_MAINTSCRIPT_ARCH=arm64 \
        "$ctrl/$script" "$@" >>"$w/out.$step" 2>&1 </dev/null
}

# A first install.
run install preinst install
unpack
run install postinst configure
record install
# The service ran: systemd made its state directory.
mkdir -p /var/lib/pmtr && chown pmtr:pmtr /var/lib/pmtr && touch /var/lib/pmtr/ports.json

# An upgrade (this version over itself), enabled.
run upgrade prerm upgrade 0.1.0
run upgrade preinst upgrade 0.1.0
unpack
run upgrade postrm upgrade 0.1.0
run upgrade postinst configure 0.1.0
record upgrade

# The administrator disabled it; an upgrade keeps it disabled.
admin disable
run upgrade-disabled prerm upgrade 0.1.0
run upgrade-disabled preinst upgrade 0.1.0
unpack
run upgrade-disabled postrm upgrade 0.1.0
run upgrade-disabled postinst configure 0.1.0
record upgrade-disabled
admin enable

# Remove: the files go, the conffile stays.
run remove prerm remove
rm -f /lib/systemd/system/pmtr.service
run remove postrm remove
record remove

# Purge: the conffile goes, then postrm.
rm -rf /etc/pmtr
run purge postrm purge
record purge
