#!/usr/bin/env bash
# Install, upgrade or remove the charge point controller on Raspberry Pi OS Bookworm.
#
#   sudo deploy/install.sh                 install (safe to run again: idempotent)
#   sudo deploy/install.sh --upgrade       install the checkout's code as a new release, restart
#   sudo deploy/install.sh --local-controller        also set up the local controller (garage load sharing)
#   sudo deploy/install.sh --local-controller-only   only the local controller (a Pi without charger hardware)
#   sudo deploy/install.sh --uninstall     remove code, units, rules; keep config and state
#   sudo deploy/install.sh --uninstall --purge   also remove config, state, user, boot config block
#   deploy/install.sh --root DIR           install into a directory tree (tests): no apt, no
#                                          useradd, no systemctl, no venv; those are only printed
#   --dry-run                              print every step, change nothing
#
# Layout it creates:
#   /opt/chargepoint/releases/<version>/venv   venv (--system-site-packages: Debian's gpiozero, lgpio;
#                                              the other dependencies are pip-installed into it)
#   /opt/chargepoint/current -> releases/<version>,  /opt/chargepoint/venv -> current/venv
#   /opt/chargepoint/doc/                      hardware-docs (commissioning, wiring, safety)
#   /etc/chargepoint/chargepoint.toml          configuration (0640 root:chargepoint, never overwritten)
#   /etc/chargepoint/local-controller.toml     with --local-controller[-only]: the local controller's (idem)
#   /var/lib/chargepoint/                      state (SQLite store), owned by the service user
#   /var/lib/chargepoint-lc/                   the local controller's state (created by systemd)
#   /etc/systemd/system/chargepoint.service, chargepoint-local-controller.service (installed, enabled only
#                                              with --local-controller[-only]), /etc/udev/rules.d/99-chargepoint.rules,
#   /etc/modprobe.d/chargepoint-blacklist-nfc.conf, /etc/polkit-1/rules.d/50-chargepoint.rules
#   /boot/firmware/config.txt                  UART, PWM, SPI lines between chargepoint markers
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=install
PURGE=0
DRY_RUN=0
ROOT=""
START=1
CHARGE_POINT=1     # the charge point service (chargepoint.service) with its hardware setup
LOCAL_CONTROLLER=0 # the local controller service (chargepoint-local-controller.service)
LC_FLAG=0          # --local-controller[-only] given
LC_CONFIG_CREATED=0

SERVICE_USER=chargepoint
SERVICE_GROUPS=(gpio dialout spi)
APT_PACKAGES=(
    python3 python3-venv python3-dev python3-pip gcc pkg-config swig
    python3-gpiozero python3-lgpio python3-systemd python3-pyscard
    pcscd pcsc-tools libpcsclite-dev libsystemd-dev
    socat
)
PIP_EXTRAS="pcsc,systemd"
BEGIN_MARK="# >>> chargepoint (deploy/install.sh) >>>"
END_MARK="# <<< chargepoint <<<"

usage() {
    cat <<EOF
usage: $0 [--upgrade | --uninstall [--purge]] [--local-controller | --local-controller-only]
          [--root DIR] [--dry-run] [--no-start] [--source DIR]

  (no option)   install or repair; keeps an existing configuration
  --upgrade     install the checkout's version as a new release and restart the service(s)
  --local-controller       also run the local controller (a garage's charge points share one site fuse):
                /etc/chargepoint/local-controller.toml from deploy/local-controller.example.toml, enabled
  --local-controller-only  the local controller alone: no charge point service, no UART/PWM/SPI boot lines
  --uninstall   stop and remove the service; keeps /etc/chargepoint and /var/lib/chargepoint
  --purge       with --uninstall: also remove configuration, state, the user and the boot config lines
  --root DIR    install into DIR instead of / (no apt-get, useradd, systemctl, venv: printed only)
  --dry-run     print what would be done, change nothing
  --no-start    do not start or restart the service
  --source DIR  project checkout to install (default: $SRC)
EOF
}

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

while (($# > 0)); do
    case "$1" in
    --upgrade) MODE=upgrade ;;
    --uninstall) MODE=uninstall ;;
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --no-start) START=0 ;;
    --local-controller)
        LOCAL_CONTROLLER=1
        LC_FLAG=1
        ;;
    --local-controller-only)
        LOCAL_CONTROLLER=1
        CHARGE_POINT=0
        LC_FLAG=1
        ;;
    --root)
        [[ $# -ge 2 && -n "$2" ]] || die "--root needs a directory"
        ROOT="$2"
        shift
        ;;
    --source)
        [[ $# -ge 2 && -n "$2" ]] || die "--source needs a directory"
        SRC="$(cd "$2" && pwd)"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        printf 'ERROR: unknown option %q\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

if ((PURGE)) && [[ $MODE != uninstall ]]; then
    die "--purge only goes with --uninstall"
fi

# Outside the target tree (packages, users, services) nothing is done in --root or --dry-run mode.
SIMULATE=0
if [[ -n $ROOT ]] || ((DRY_RUN)); then
    SIMULATE=1
fi
if [[ -n $ROOT ]]; then
    mkdir -p -- "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
    [[ $ROOT != / ]] || ROOT=""
fi

OPT="$ROOT/opt/chargepoint"
ETC_DIR="$ROOT/etc/chargepoint"
CONFIG="$ETC_DIR/chargepoint.toml"
STATE_DIR="$ROOT/var/lib/chargepoint"
UNIT="$ROOT/etc/systemd/system/chargepoint.service"
LC_UNIT="$ROOT/etc/systemd/system/chargepoint-local-controller.service"
LC_CONFIG="$ETC_DIR/local-controller.toml"
LC_SERVICE=chargepoint-local-controller.service
UDEV_RULES="$ROOT/etc/udev/rules.d/99-chargepoint.rules"
MODPROBE="$ROOT/etc/modprobe.d/chargepoint-blacklist-nfc.conf"
POLKIT_RULES="$ROOT/etc/polkit-1/rules.d/50-chargepoint.rules"
CLI_LINK="$ROOT/usr/local/bin/chargepoint"  # so that `chargepoint status` etc. work from any shell
BOOT_DIR="$ROOT/boot/firmware"
REBOOT_REQUIRED=0

# A command that changes the system outside the target tree.
sys() {
    if ((SIMULATE)); then
        printf '    would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        printf '    +'
        printf ' %q' "$@"
        printf '\n'
        "$@"
    fi
}

# A change inside the target tree: done unless --dry-run.
fs() {
    if ((DRY_RUN)); then
        printf '    would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# chown needs the service user, which --root mode does not create.
own() {
    if ((SIMULATE)); then
        printf '    would run: chown %s\n' "$*"
    else
        chown "$@"
    fi
}

# Copy a file only when its content differs; prints whether it changed.
put_file() {
    local src="$1" dst="$2" mode="$3"
    if [[ -f $dst ]] && cmp -s -- "$src" "$dst"; then
        note "unchanged: ${dst#"$ROOT"}"
        return 1
    fi
    fs install -D -m "$mode" -- "$src" "$dst"
    note "installed: ${dst#"$ROOT"}"
    return 0
}

put_text() {
    local dst="$1" mode="$2" text="$3" tmp
    tmp="$(mktemp)"
    printf '%s\n' "$text" >"$tmp"
    local rc=0
    put_file "$tmp" "$dst" "$mode" || rc=$?
    rm -f -- "$tmp"
    return "$rc"
}

project_version() {
    python3 - "$SRC/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    print(tomllib.load(fh)["project"]["version"])
PY
}

check_platform() {
    if ((SIMULATE)); then
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "run as root: sudo $0 (or use --root DIR / --dry-run)"
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        . /etc/os-release
        if [[ ${VERSION_CODENAME:-} != bookworm ]]; then
            warn "written for Raspberry Pi OS / Debian bookworm, this is ${PRETTY_NAME:-unknown}; continuing"
        fi
    fi
}

install_packages() {
    say "packages"
    sys apt-get update
    sys env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
}

ensure_user() {
    say "service user '$SERVICE_USER' (groups: ${SERVICE_GROUPS[*]})"
    local g
    for g in "${SERVICE_GROUPS[@]}"; do
        if ((SIMULATE)) || ! getent group "$g" >/dev/null; then
            sys groupadd --system -f "$g"
        fi
    done
    if ((SIMULATE)) || ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        sys useradd --system --user-group --home-dir /var/lib/chargepoint --no-create-home \
            --shell /usr/sbin/nologin --comment "EV charge point controller" "$SERVICE_USER"
    fi
    local joined
    joined="$(
        IFS=,
        echo "${SERVICE_GROUPS[*]}"
    )"
    sys usermod --append --groups "$joined" "$SERVICE_USER"
}

# /opt/chargepoint/releases/<version>/venv, "current" and the venv compatibility link.
install_release() {
    local version rel venv
    version="$(project_version)"
    rel="$OPT/releases/$version"
    venv="$rel/venv"
    say "release $version in ${OPT#"$ROOT"}"
    fs install -d -m 0755 -- "$OPT" "$OPT/releases"
    if [[ -f $rel/.complete ]]; then
        note "release $version exists: reinstalling the package from $SRC"
        sys "$venv/bin/pip" install --disable-pip-version-check --no-deps --force-reinstall "$SRC"
        sys "$venv/bin/pip" install --disable-pip-version-check "${SRC}[${PIP_EXTRAS}]"
    else
        fs install -d -m 0755 -- "$rel"
        # UpdateFirmware makes the next release's venv like this one (chargepoint.firmware.update,
        # RunningEnvironment): the same interpreter, the same --system-site-packages, and hard links to the
        # dependencies pip puts in here. Change one, change the other.
        sys python3 -m venv --system-site-packages "$venv"
        sys "$venv/bin/pip" install --disable-pip-version-check --upgrade pip
        sys "$venv/bin/pip" install --disable-pip-version-check "${SRC}[${PIP_EXTRAS}]"
        local info
        info="$(printf '{\n  "version": "%s",\n  "artifact": null,\n  "sha256": null,\n  "installed_at": "%s",\n  "installed_by": "deploy/install.sh"\n}' \
            "$version" "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)")"
        if ((!DRY_RUN)); then
            printf '%s\n' "$info" >"$rel/release.json"
            printf '%s' "$version" >"$rel/.complete"
        fi
    fi
    local cur=""
    if [[ -L $OPT/current ]]; then
        cur="$(basename "$(readlink "$OPT/current")")"
    fi
    if [[ $cur != "$version" ]]; then
        if [[ -n $cur ]]; then
            fs ln -sfn "releases/$cur" "$OPT/previous"
            note "previous -> releases/$cur"
        fi
        fs ln -sfn "releases/$version" "$OPT/.current.tmp"
        fs mv -T -- "$OPT/.current.tmp" "$OPT/current"
        note "current -> releases/$version"
    fi
    if [[ ! -L $OPT/venv ]]; then
        [[ ! -e $OPT/venv ]] || die "${OPT#"$ROOT"}/venv exists and is not a symlink; move it away first"
        fs ln -s current/venv "$OPT/venv"
    fi
    # Docs next to the code (the unit's Documentation= points here).
    fs install -d -m 0755 -- "$OPT/doc"
    local f
    for f in "$SRC"/hardware-docs/*; do
        [[ -f $f ]] || continue
        put_file "$f" "$OPT/doc/$(basename "$f")" 0644 >/dev/null || true
    done
    # The local controller's unit documents itself with its example configuration.
    put_file "$SRC/deploy/local-controller.example.toml" "$OPT/doc/local-controller.example.toml" 0644 >/dev/null || true
    # OCPP UpdateFirmware installs releases from inside the service (chargepoint.firmware.update).
    own -R "$SERVICE_USER:$SERVICE_USER" "$OPT"
}

# A configuration file from its example unless one exists (never overwritten); returns 0 when it created it.
create_config() {
    local example="$SRC/deploy/$1" dst="$2"
    if [[ -e $dst ]]; then
        note "keeping existing ${dst#"$ROOT"}"
        return 1
    fi
    [[ -f $example ]] || die "$example is missing: cannot create ${dst#"$ROOT"}"
    # Called as an if condition, where set -e does not apply: failures are checked here.
    fs install -m 0640 -- "$example" "$dst" || die "cannot create ${dst#"$ROOT"}"
    own "root:$SERVICE_USER" "$dst" || die "cannot give ${dst#"$ROOT"} to group $SERVICE_USER"
    return 0
}

install_config() {
    say "configuration"
    fs install -d -m 0750 -- "$ETC_DIR"
    own "root:$SERVICE_USER" "$ETC_DIR"
    if ((LOCAL_CONTROLLER)) && create_config local-controller.example.toml "$LC_CONFIG"; then
        LC_CONFIG_CREATED=1
        note "created ${LC_CONFIG#"$ROOT"} from deploy/local-controller.example.toml: set the central" \
            "system, the site fuse and the charge points (ids, passwords) before starting it"
    fi
    if ((!CHARGE_POINT)); then
        note "--local-controller-only: no charge point configuration"
    elif create_config chargepoint.example.toml "$CONFIG"; then
        note "created ${CONFIG#"$ROOT"} from deploy/chargepoint.example.toml: edit it before charging"
        # The example enables the web UI on the LAN ([web]); its admin password is asked for here.
        if ((!SIMULATE)) && [[ -t 0 ]]; then
            "$OPT/venv/bin/chargepoint" set-password --config "$CONFIG" || warn "web UI password not set"
        else
            note "web UI on port 8080: set its admin password with: sudo chargepoint set-password"
        fi
    fi
    fs install -d -m 0750 -- "$STATE_DIR"
    own "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
}

install_system_files() {
    say "systemd units, udev rules, module blacklist, polkit rule"
    local changed=0
    put_file "$SRC/systemd/chargepoint.service" "$UNIT" 0644 && changed=1
    # Installed always (an upgrade keeps it current), enabled only with --local-controller[-only].
    put_file "$SRC/systemd/chargepoint-local-controller.service" "$LC_UNIT" 0644 || true
    put_file "$SRC/deploy/99-chargepoint.rules" "$UDEV_RULES" 0644 && changed=1
    fs mkdir -p -- "$(dirname "$CLI_LINK")"
    fs ln -sfn /opt/chargepoint/venv/bin/chargepoint "$CLI_LINK"
    # pcscd must own the ACR122U: the kernel's NFC stack would claim it first.
    put_text "$MODPROBE" 0644 "# deploy/install.sh: let pcscd (libccid) drive the ACR122U instead of the kernel NFC stack
blacklist pn533_usb
blacklist pn533
blacklist nfc" && changed=1
    # pcscd built with polkit refuses clients without a session; the service has none.
    # Also let the service restart itself after a firmware switch.
    if [[ -n $ROOT || -d /etc/polkit-1 ]]; then
        put_text "$POLKIT_RULES" 0644 "// deploy/install.sh: rights of the charge point service user
polkit.addRule(function(action, subject) {
    if (subject.user != \"$SERVICE_USER\") { return polkit.Result.NOT_HANDLED; }
    if (action.id == \"org.debian.pcsc-lite.access_pcsc\" ||
        action.id == \"org.debian.pcsc-lite.access_card\") {
        return polkit.Result.YES;
    }
    if (action.id == \"org.freedesktop.systemd1.manage-units\" &&
        action.lookup(\"unit\") == \"chargepoint.service\" &&
        action.lookup(\"verb\") == \"restart\") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});" && changed=1
    fi
    if ((changed)); then
        sys udevadm control --reload-rules
        sys udevadm trigger --subsystem-match=tty --subsystem-match=pwm --subsystem-match=gpio \
            --subsystem-match=spidev
        if ((SIMULATE)) || grep -qE '^(pn533|nfc) ' /proc/modules 2>/dev/null; then
            sys modprobe -r pn533_usb pn533 nfc
        fi
    fi
}

boot_line_active() {
    local file="$1" line="$2"
    awk -v want="$line" '{ sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") } $0 == want { found = 1 } END { exit !found }' "$file"
}

# The board from the device tree's model string (NUL-terminated), e.g. "Raspberry Pi 5 Model B Rev 1.0".
# Prints pi5, pi4, pi3, zero2w or unknown; the model itself goes to BOARD_MODEL.
BOARD_MODEL=""
detect_board() {
    local model_file="$ROOT/proc/device-tree/model"
    BOARD_MODEL=""
    if [[ -r $model_file ]]; then
        BOARD_MODEL="$(tr -d '\0' <"$model_file")"
    fi
    case "$BOARD_MODEL" in
    "Raspberry Pi 5 "* | "Raspberry Pi Compute Module 5"*) BOARD=pi5 ;;
    "Raspberry Pi 4 "* | "Raspberry Pi 400"* | "Raspberry Pi Compute Module 4"*) BOARD=pi4 ;;
    "Raspberry Pi 3 "* | "Raspberry Pi Compute Module 3"*) BOARD=pi3 ;;
    "Raspberry Pi Zero 2 W"*) BOARD=zero2w ;;
    *) BOARD=unknown ;;
    esac
}

# The lines of deploy/boot-config.txt meant for board $1 ("[board all]" sections and those naming it).
boot_lines_for() {
    local board="$1" line in_section=0
    while IFS= read -r line || [[ -n $line ]]; do
        line="${line%$'\r'}"
        [[ -z ${line//[[:space:]]/} || $line == \#* ]] && continue
        if [[ $line =~ ^\[board[[:space:]]+([^]]*)\]$ ]]; then
            in_section=0
            local name
            for name in ${BASH_REMATCH[1]}; do
                [[ $name == all || $name == "$board" ]] && in_section=1
            done
            continue
        fi
        ((in_section)) && printf '%s\n' "$line"
    done <"$SRC/deploy/boot-config.txt"
    return 0
}

configure_boot() {
    say "boot configuration"
    if ((!CHARGE_POINT)); then
        note "--local-controller-only: the boot configuration is left as it is (no pilot, meter UART or SPI here)"
        return
    fi
    local cfg="$BOOT_DIR/config.txt"
    if [[ ! -f $cfg && -z $ROOT && -f /boot/config.txt ]]; then
        cfg=/boot/config.txt # before Bookworm
    fi
    if [[ ! -f $cfg ]]; then
        warn "${cfg#"$ROOT"} not found (not a Raspberry Pi?): add the lines of deploy/boot-config.txt yourself"
        return
    fi
    local BOARD
    detect_board
    if [[ $BOARD == unknown ]]; then
        warn "board not recognised (${BOARD_MODEL:-no ${ROOT:+$ROOT}/proc/device-tree/model}): only the board-independent" \
            "boot lines are written (SPI); UART and PWM differ between Pi models: add the section of" \
            "deploy/boot-config.txt for your board yourself (hardware-docs/pinout.md)"
    else
        note "board: $BOARD_MODEL ($BOARD)"
    fi
    local -a missing=()
    local line
    while IFS= read -r line; do
        if ! boot_line_active "$cfg" "$line"; then
            missing+=("$line")
        fi
    done < <(boot_lines_for "$BOARD")
    if grep -qE '^[[:space:]]*dtoverlay=pwm-2chan' "$cfg"; then
        warn "${cfg#"$ROOT"} already loads pwm-2chan: make sure GPIO18 is PWM0 and not used twice"
    fi
    if ((${#missing[@]} == 0)); then
        if [[ $BOARD == unknown ]]; then
            note "${cfg#"$ROOT"} already has SPI enabled"
        else
            note "${cfg#"$ROOT"} already has UART, PWM and SPI enabled for $BOARD"
        fi
    else
        note "adding to ${cfg#"$ROOT"}: ${missing[*]}"
        if ((!DRY_RUN)); then
            [[ -e $cfg.chargepoint-backup ]] || cp -p -- "$cfg" "$cfg.chargepoint-backup"
            if grep -qxF "$END_MARK" "$cfg"; then
                local tmp
                tmp="$(mktemp)"
                awk -v endmark="$END_MARK" -v add="$(printf '%s\n' "${missing[@]}")" \
                    '$0 == endmark { printf "%s\n", add } { print }' "$cfg" >"$tmp"
                cat -- "$tmp" >"$cfg"
                rm -f -- "$tmp"
            else
                {
                    printf '\n%s\n[all]\n' "$BEGIN_MARK"
                    printf '%s\n' "${missing[@]}"
                    printf '%s\n' "$END_MARK"
                } >>"$cfg"
            fi
        fi
        REBOOT_REQUIRED=1
    fi
    # The UART on GPIO14/15 belongs to the meter/pilot board, not to a login console. On a Pi 5 serial0 is
    # the debug connector (ttyAMA10): its console stays; only one on ttyAMA0 (GPIO14/15) goes.
    local consoles=""
    case "$BOARD" in
    pi5)
        consoles="ttyAMA0"
        note "on-board UART (GPIO14/15) on this $BOARD: port = \"/dev/ttyAMA0\" in the configuration" \
            "(/dev/serial0 is the debug connector on a Pi 5); USB adapters: /dev/chargepoint-meter, -evse, -rfid"
        ;;
    pi3 | pi4 | zero2w)
        consoles="serial0|ttyAMA0|ttyS0"
        note "on-board UART (GPIO14/15) on this $BOARD: port = \"/dev/ttyAMA0\" (or /dev/serial0, the same" \
            "UART with disable-bt); USB adapters: /dev/chargepoint-meter, -evse, -rfid"
        ;;
    esac
    local cmdline
    cmdline="$(dirname "$cfg")/cmdline.txt"
    if [[ -n $consoles && -f $cmdline ]] && grep -qE "(^|[[:space:]])console=($consoles),[0-9]+" "$cmdline"; then
        note "removing the serial console from ${cmdline#"$ROOT"}"
        if ((!DRY_RUN)); then
            [[ -e $cmdline.chargepoint-backup ]] || cp -p -- "$cmdline" "$cmdline.chargepoint-backup"
            sed -i -E "s/(^|[[:space:]])console=($consoles),[0-9]+//g; s/^[[:space:]]+//" "$cmdline"
        fi
        REBOOT_REQUIRED=1
    fi
    # Bluetooth no longer has a UART where disable-bt was written: its modem service would only fail.
    if ((REBOOT_REQUIRED)) && boot_line_active "$cfg" "dtoverlay=disable-bt"; then
        if ((SIMULATE)) || systemctl list-unit-files hciuart.service >/dev/null 2>&1; then
            sys systemctl disable hciuart.service
        fi
    fi
    if ((REBOOT_REQUIRED && !SIMULATE)); then
        touch /run/reboot-required
    fi
}

remove_boot_block() {
    local cfg="$BOOT_DIR/config.txt"
    [[ -f $cfg ]] && grep -qxF "$BEGIN_MARK" "$cfg" || return 0
    note "removing the chargepoint block from ${cfg#"$ROOT"}"
    if ((!DRY_RUN)); then
        local tmp
        tmp="$(mktemp)"
        # drop the block and the blank line written before it
        awk -v b="$BEGIN_MARK" -v e="$END_MARK" '
            $0 == b { skip = 1; if (held) { held = 0 } ; next }
            skip && $0 == e { skip = 0; next }
            skip { next }
            { if (held) print ""; held = 0 }
            $0 == "" { held = 1; next }
            { print }
            END { if (held) print "" }' "$cfg" >"$tmp"
        cat -- "$tmp" >"$cfg"
        rm -f -- "$tmp"
    fi
    REBOOT_REQUIRED=1
}

# The local controller: enabled with --local-controller[-only]; on --upgrade restarted when it runs.
start_local_controller() {
    if ((!LOCAL_CONTROLLER)); then
        # installed once by hand or disabled: restarted only when it runs, and only on a configuration that passes
        if [[ $MODE == upgrade ]] && { ((SIMULATE)) || [[ ! -e $LC_CONFIG ]] ||
            "$OPT/venv/bin/chargepoint" check-config "$LC_CONFIG" >/dev/null; }; then
            sys systemctl try-restart "$LC_SERVICE"
        fi
        return
    fi
    say "local controller"
    sys systemctl enable "$LC_SERVICE"
    if ((!START)); then
        note "--no-start: start it with: systemctl start ${LC_SERVICE%.service}"
        return
    fi
    if ((LC_CONFIG_CREATED)); then
        # the example's passwords are public: it would accept anybody's box as CP-1
        note "not started: edit ${LC_CONFIG#"$ROOT"} (central system, fuse, charge points and their passwords), then:"
        note "  chargepoint check-config ${LC_CONFIG#"$ROOT"} && systemctl start ${LC_SERVICE%.service}"
        return
    fi
    start_unit "$LC_SERVICE" "$LC_CONFIG"
}

# Start a unit (try-restart first on --upgrade) when its configuration passes check-config.
start_unit() {
    local unit="$1" config="$2"
    if ((!SIMULATE)) && ! "$OPT/venv/bin/chargepoint" check-config "$config"; then
        warn "the configuration does not pass check-config: fix ${config#"$ROOT"}, then: systemctl start ${unit%.service}"
        return
    fi
    if [[ $MODE == upgrade ]]; then
        sys systemctl try-restart "$unit"
    fi
    sys systemctl start "$unit"
}

start_service() {
    say "service"
    sys systemctl daemon-reload
    if ((!CHARGE_POINT)); then
        note "--local-controller-only: chargepoint.service is installed but not enabled"
        start_local_controller
        return
    fi
    sys systemctl enable chargepoint.service
    start_charge_point
    start_local_controller
}

start_charge_point() {
    if ((!START)); then
        note "--no-start: start it with: systemctl start chargepoint"
        return
    fi
    if ((REBOOT_REQUIRED)); then
        note "not started now: the boot configuration changed; it starts after the reboot"
        return
    fi
    if [[ $MODE == upgrade ]]; then
        note "restarting: a running charging session is stopped cleanly and resumes as a new one"
    fi
    start_unit chargepoint.service "$CONFIG"
}

do_install() {
    check_platform
    if [[ $MODE == upgrade && ! -L $OPT/current ]]; then
        die "nothing to upgrade: ${OPT#"$ROOT"}/current does not exist (run without --upgrade to install)"
    fi
    [[ -f $SRC/pyproject.toml ]] || die "$SRC is not a project checkout (no pyproject.toml); use --source DIR"
    # A run without --local-controller[-only] keeps what the install set up: a local controller alone stays
    # alone (add a charge point with --local-controller).
    if ((!LC_FLAG)) && [[ ! -e $CONFIG && -e $LC_CONFIG ]]; then
        note "only the local controller is installed here (no ${CONFIG#"$ROOT"}): it stays alone (add a charge point with --local-controller)"
        CHARGE_POINT=0
        LOCAL_CONTROLLER=1
    fi
    install_packages
    ensure_user
    install_release
    install_config
    install_system_files
    configure_boot
    start_service
    say "done ($MODE${ROOT:+ into $ROOT})"
    if ((REBOOT_REQUIRED)); then
        printf '\n*** REBOOT REQUIRED: the boot configuration changed (UART/PWM/SPI). Run: sudo reboot ***\n\n'
    fi
    if ((LOCAL_CONTROLLER)); then
        note "local controller: chargepoint status --socket /run/chargepoint-lc/status.sock"
        note "          logs: journalctl -u ${LC_SERVICE%.service} -f"
        note "          the charge points connect to ws://<this host>:9100/ (their id is appended)"
        note "          site page (optional): sudo chargepoint set-password --config /etc/chargepoint/local-controller.toml"
    fi
    if ((!CHARGE_POINT)); then
        return
    fi
    note "status:   chargepoint status      (as root or a member of group $SERVICE_USER:"
    note "          sudo adduser \$USER $SERVICE_USER)"
    note "logs:     journalctl -u chargepoint -f"
    note "hardware: sudo systemctl stop chargepoint, then"
    note "          sudo -u $SERVICE_USER /opt/chargepoint/venv/bin/chargepoint check-hardware --config /etc/chargepoint/chargepoint.toml"
    note "          (hardware-docs/commissioning.md: reboot first, then the whole sequence)"
}

do_uninstall() {
    check_platform
    say "stopping and removing the service"
    local unit
    for unit in chargepoint.service "$LC_SERVICE"; do
        if ((SIMULATE)) || systemctl list-unit-files "$unit" >/dev/null 2>&1; then
            sys systemctl disable --now "$unit"
        fi
    done
    local f
    for f in "$UNIT" "$LC_UNIT" "$UDEV_RULES" "$MODPROBE" "$POLKIT_RULES" "$CLI_LINK"; do
        if [[ -e $f || -L $f ]]; then
            fs rm -f -- "$f"
            note "removed ${f#"$ROOT"}"
        fi
    done
    sys systemctl daemon-reload
    sys udevadm control --reload-rules
    if [[ -e $OPT || -L $OPT ]]; then
        fs rm -rf -- "$OPT"
        note "removed ${OPT#"$ROOT"}"
    fi
    if ((PURGE)); then
        say "purging configuration, state, user and boot configuration"
        [[ ! -e $ETC_DIR ]] || fs rm -rf -- "$ETC_DIR"
        [[ ! -e $STATE_DIR ]] || fs rm -rf -- "$STATE_DIR"
        [[ ! -e $ROOT/var/lib/chargepoint-lc ]] || fs rm -rf -- "$ROOT/var/lib/chargepoint-lc"
        remove_boot_block
        if ((SIMULATE)) || id -u "$SERVICE_USER" >/dev/null 2>&1; then
            sys userdel "$SERVICE_USER"
        fi
        if ((REBOOT_REQUIRED)); then
            printf '\n*** REBOOT REQUIRED to drop the UART/PWM/SPI boot settings. ***\n\n'
        fi
    else
        note "kept ${CONFIG#"$ROOT"} and ${STATE_DIR#"$ROOT"} (use --uninstall --purge to remove them)"
        note "kept the boot configuration lines in config.txt"
    fi
    say "uninstalled${ROOT:+ from $ROOT}"
}

if ((DRY_RUN)); then
    say "dry run: nothing is changed"
fi
case "$MODE" in
install | upgrade) do_install ;;
uninstall) do_uninstall ;;
esac
