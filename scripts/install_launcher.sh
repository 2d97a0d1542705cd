#!/bin/sh
# Writes the `stepline` launcher into BIN_DIR (argument 1) for the checkout CHECKOUT (argument 2).
#
# The launcher runs the CLI of the newest checkout that still exists: a clone that is deleted
# afterwards (a clean-clone `make test`) must not leave a login shell's `stepline` broken, so the
# checkouts installed before stay listed behind it (five at most).
set -eu
bin_dir=$1
checkout=$2
launcher="$bin_dir/stepline"
mkdir -p "$bin_dir"
previous=""
if [ -f "$launcher" ]; then
  previous=$(sed -n 's/^# checkouts: //p' "$launcher")
fi
list="$checkout"
count=1
for dir in $previous; do
  if [ "$dir" != "$checkout" ] && [ "$count" -lt 5 ]; then
    list="$list $dir"
    count=$((count + 1))
  fi
done
tmp="$launcher.tmp.$$"
cat > "$tmp" <<LAUNCHER
#!/bin/sh
# Installed by \`make install\`: runs the stepline CLI of the first of these checkouts that exists.
# checkouts: $list
for dir in $list; do
  if [ -x "\$dir/.venv/bin/stepline" ]; then
    exec "\$dir/.venv/bin/stepline" "\$@"
  fi
done
echo "stepline: none of the checkouts it was installed from exists any more ($list); run \\\`make install\\\` in yours" >&2
exit 127
LAUNCHER
chmod +x "$tmp"
mv "$tmp" "$launcher"
echo "stepline is on PATH: $launcher runs this checkout's CLI ($checkout)"
