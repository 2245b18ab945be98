#!/usr/bin/env bash
# Installs this folder's npm test peers (see ../npm_install.sh).
exec "$(dirname "$0")/../npm_install.sh" "$(dirname "$0")"
