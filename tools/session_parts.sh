# Sourced by the GPU session scripts: `part SECONDS TITLE COMMAND...` runs one bounded part of a
# session, appending its output to "$log" and a header and exit line to the console too, so a
# part that fails or times out never stops the parts after it. Needs $log set by the caller.
started=$(date +%s)
part() {
  local limit=$1 title=$2; shift 2
  echo "=== $title ($(( $(date +%s) - started )) s in, limit $limit s)" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?; echo "=== $title: exit $rc" | tee -a "$log"
}
