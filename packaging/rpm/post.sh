# embargo-agent %post: $1 is 1 on install, 2 on upgrade.
install -d -m 0700 /var/lib/embargo
install -d -m 0755 /etc/embargo
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ ! -f /etc/embargo/root.json ]; then
        echo "embargo-agent: /etc/embargo/root.json (the fleet's trust anchor) is missing; the agent is not started." >&2
    elif [ "$1" -ge 2 ]; then
        systemctl try-restart embargod.service || :
    else
        systemctl enable --now embargod.service || :
    fi
else
    echo "embargo-agent: systemd is not running here; enable embargod.service when the image boots" >&2
fi
