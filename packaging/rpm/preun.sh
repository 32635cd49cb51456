# embargo-agent %preun: $1 is 0 on erase (stop the agent), 1 on upgrade (keep it running).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now embargod.service || :
fi
