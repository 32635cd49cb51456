# embargo-agent %preun ($1: 0 on erase, 1 on upgrade). %systemd_preun embargod.service: on erase
# only, disable and stop the agent (an upgrade keeps it running; %postun restarts it).
if [ "$1" -eq 0 ]; then
    if [ -x /usr/lib/systemd/systemd-update-helper ]; then
        /usr/lib/systemd/systemd-update-helper remove-system-units embargod.service || :
    else
        systemctl --no-reload disable --now embargod.service >/dev/null 2>&1 || :
    fi
fi
