# embargo-agent %postun: rpm has no purge; state is kept on erase (remove /var/lib/embargo by hand).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
