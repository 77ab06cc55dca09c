#!/usr/bin/env bash
# Print the path of a Python >= 3.12 that actually runs, or explain what to install.
# pyenv shims exist for versions that are not selected and fail when run, so each candidate
# is tried with `-c ''` before it is trusted.
set -u
candidates=(${PYTHON:-} python3.13 python3.12 python3 python)
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  candidates+=($(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV))
fi
candidates+=(/usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3.12)
for py in "${candidates[@]}"; do
  [ -n "$py" ] || continue
  if "$py" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
    command -v "$py" 2>/dev/null || echo "$py"
    exit 0
  fi
done
echo "vingd needs Python >= 3.12 and found none that runs (tried: ${candidates[*]})." >&2
echo "Install one (e.g. 'pyenv install 3.12', 'apt-get install python3.12-venv', or python.org) or set PYTHON=/path/to/python3.12." >&2
exit 1
