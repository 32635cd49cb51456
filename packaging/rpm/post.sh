# embargo-agent %post ($1: 1 on install, 2 on upgrade). %systemd_post embargod.service, written
# out because cargo-generate-rpm expands no macros: on first install, apply the preset (the
# package's 80-embargo-agent.preset enables the agent), through systemd-update-helper where
# systemd has it (>= 249) and `systemctl --no-reload preset` otherwise. Then, unlike the macro,
# start a freshly installed agent when systemd runs and the fleet's trust anchor is in place.
install -d -m 0700 /var/lib/embargo
install -d -m 0755 /etc/embargo
if [ "$1" -eq 1 ]; then
    if [ -x /usr/lib/systemd/systemd-update-helper ]; then
        /usr/lib/systemd/systemd-update-helper install-system-units embargod.service || :
    else
        systemctl --no-reload preset embargod.service >/dev/null 2>&1 || :
    fi
fi
if [ -d /run/systemd/system ]; then
    if [ ! -f /etc/embargo/root.json ]; then
        echo "embargo-agent: /etc/embargo/root.json (the fleet's trust anchor) is missing; the agent is not started." >&2
    elif [ "$1" -eq 1 ]; then
        systemctl daemon-reload >/dev/null 2>&1 || :
        systemctl start embargod.service >/dev/null 2>&1 || :
    fi
else
    echo "embargo-agent: systemd is not running here; embargod.service starts at the next boot" >&2
fi
