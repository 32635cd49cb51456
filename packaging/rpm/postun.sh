# embargo-agent %postun ($1: 0 on erase, 1 on upgrade). %systemd_postun_with_restart
# embargod.service: on upgrade, restart the agent so the new binary enforces (systemd-update-helper
# defers it to the end of the transaction). rpm has no purge: /var/lib/embargo is kept on erase.
if [ "$1" -ge 1 ]; then
    if [ -x /usr/lib/systemd/systemd-update-helper ]; then
        /usr/lib/systemd/systemd-update-helper mark-restart-system-units embargod.service || :
    else
        systemctl daemon-reload >/dev/null 2>&1 || :
        systemctl try-restart embargod.service >/dev/null 2>&1 || :
    fi
fi
