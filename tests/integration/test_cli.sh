#!/usr/bin/env bash
# The command line: help, version, usage errors (exit 2), --quiet, --json documents and
# --progress=json lines.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Fails unless the stdout of the last command mentions every given text.
expect_stdout_mentions() {
    local context=$1 text
    shift
    for text in "$@"; do
        if ! grep -qiF -- "$text" "$TEST_TMP/last.stdout"; then
            fail "expected $context to mention $text, got:
$LAST_STDOUT"
        fi
    done
}

# Fails unless the stdout of the last command is one JSON document with a versioned "schema" name
# such as "vmcrypt-inspect/1".
expect_json_schema() {
    local context=$1
    echo "$LAST_STDOUT" >"$TEST_TMP/output.json"
    local schema
    schema=$(json_value "$TEST_TMP/output.json" schema)
    if [[ ! $schema =~ ^vmcrypt-[a-z-]+/[0-9]+$ ]]; then
        fail "expected a versioned schema such as vmcrypt-inspect/1 in the JSON of $context, got \"$schema\""
    fi
}

dir="$TEST_TMP/disk"
disk="$dir/disk.vmdk"
plain="$TEST_TMP/plain.raw"
mkdir "$dir"
make_small_disk "$disk" "$plain"
hash_disk_files "$dir" >"$TEST_TMP/hashes.plain"

# Help and version.
expect_exit 0 "$VMCRYPT" --help
expect_stdout_mentions "vmcrypt --help" encrypt decrypt inspect --json --quiet --verbose --progress --version
expect_exit 0 "$VMCRYPT" encrypt --help
expect_stdout_mentions "vmcrypt encrypt --help" --key-file --passphrase-file --passphrase-fd --passphrase \
    --keystore --kek-id --pbkdf-memory --pbkdf-iterations --pbkdf-parallel --window-size
expect_exit 0 "$VMCRYPT" decrypt --help
expect_stdout_mentions "vmcrypt decrypt --help" --key-file --passphrase-file --passphrase-fd --keystore --window-size
expect_exit 0 "$VMCRYPT" inspect --help
expect_stdout_mentions "vmcrypt inspect --help" DISK
expect_exit 0 "$VMCRYPT" --version
if [[ ! $LAST_STDOUT =~ [0-9]+\.[0-9]+ ]]; then
    fail "expected vmcrypt --version to print a version number, got: $LAST_STDOUT"
fi

# Usage errors: exit 2, one line on stderr, nothing written.
expect_exit 2 "$VMCRYPT"
expect_exit 2 "$VMCRYPT" frobnicate "$disk"
expect_stderr_contains 'unknown command "frobnicate"'
expect_exit 2 "$VMCRYPT" encrypt --kek-id not-a-uuid "$TEST_TMP/no-such-disk.vmdk"
expect_stderr_contains "--kek-id"
expect_exit 2 "$VMCRYPT" encrypt
expect_exit 2 "$VMCRYPT" encrypt --no-such-option "$disk"
expect_stderr_contains "--no-such-option"
expect_exit 2 "$VMCRYPT" encrypt "$disk" "$disk"
printf 'a passphrase\n' >"$TEST_TMP/passphrase.txt"
expect_exit 2 "$VMCRYPT" encrypt --passphrase-file "$TEST_TMP/passphrase.txt" --passphrase-fd 3 "$disk" \
    3<"$TEST_TMP/passphrase.txt"
expect_exit 2 "$VMCRYPT" --progress=sideways encrypt "$disk"
expect_exit 2 "$VMCRYPT" encrypt --window-size 0 "$disk"
expect_exit 2 "$VMCRYPT" encrypt --window-size many "$disk"
expect_exit 2 "$VMCRYPT" encrypt --window-size 2000 "$disk"
expect_stderr_contains "MiB from 1 to 1024"
expect_exit 2 "$VMCRYPT" encrypt --pbkdf-memory lots --passphrase-file "$TEST_TMP/passphrase.txt" "$disk"
expect_contents_unchanged "$dir" "$TEST_TMP/hashes.plain" "usage errors"

# A path with an escape sequence and a line break is printed escaped, on one line, so a crafted name
# cannot rewrite the terminal or fake a second message.
crafted=$TEST_TMP/$'evil\e[2J\nname.vmdk'
expect_exit 3 "$VMCRYPT" inspect "$crafted"
expect_stderr_contains 'evil\x1b[2J name.vmdk'
if grep -q $'\e' "$TEST_TMP/last.stderr"; then
    fail "an ESC byte reached stderr: $LAST_STDERR"
fi

# --quiet prints nothing on success, before or after the subcommand.
expect_exit 0 "$VMCRYPT" --quiet encrypt "$disk"
if [[ -n $LAST_STDOUT$LAST_STDERR ]]; then
    fail "expected vmcrypt --quiet encrypt to print nothing, got stdout: $LAST_STDOUT stderr: $LAST_STDERR"
fi
expect_exit 0 "$VMCRYPT" decrypt -q "$disk"
if [[ -n $LAST_STDOUT$LAST_STDERR ]]; then
    fail "expected vmcrypt decrypt -q to print nothing, got stdout: $LAST_STDOUT stderr: $LAST_STDERR"
fi

# --json: one document with a versioned schema on stdout, before or after the subcommand.
expect_exit 0 "$VMCRYPT" --json inspect "$disk"
expect_json_schema "inspect"
expect_exit 0 "$VMCRYPT" encrypt --json "$disk"
expect_json_schema "encrypt"
expect_exit 0 "$VMCRYPT" --json inspect "$disk"
expect_json_schema "inspect of an encrypted disk"
expect_exit 0 "$VMCRYPT" --json decrypt "$disk"
expect_json_schema "decrypt"
expect_same_as_raw "$disk" "$plain" "after encrypt --json and decrypt --json"

# An error with --json: the error document on stdout, one line on stderr.
expect_exit 3 "$VMCRYPT" --json decrypt "$disk"
echo "$LAST_STDOUT" >"$TEST_TMP/error.json"
schema=$(json_value "$TEST_TMP/error.json" schema)
[[ $schema == vmcrypt-error/1 ]] || fail "expected the JSON error document to have schema vmcrypt-error/1, got \"$schema\""
exit_code=$(json_value "$TEST_TMP/error.json" exitCode)
[[ $exit_code == 3 ]] || fail "expected exitCode 3 in the JSON error document, got $exit_code"
error_text=$(json_value "$TEST_TMP/error.json" error)
[[ -n $error_text ]] || fail "expected a non-empty error in the JSON error document"
expect_exit 2 "$VMCRYPT" --json encrypt --no-such-option "$disk"

# --progress=json: JSON lines on stderr with event "progress", bytesDone never above bytesTotal and
# never going back. A 64 MiB disk of random data in 1 MiB windows takes long enough for a few lines.
make_random_disk monolithicSparse "$dir/random.vmdk" 64M 64M "$TEST_TMP/random.raw"
expect_exit 0 "$VMCRYPT" --progress=json encrypt --window-size 1 "$dir/random.vmdk"
echo "$LAST_STDERR" >"$TEST_TMP/progress.jsonl"
"$PYTHON" - "$TEST_TMP/progress.jsonl" <<'PY' || fail "invalid --progress=json output on stderr (see above):
$LAST_STDERR"
import json, sys

events = []
for number, line in enumerate(open(sys.argv[1]), 1):
    if not line.strip():
        continue
    try:
        event = json.loads(line)
    except json.JSONDecodeError as error:
        sys.exit(f"line {number} is not JSON ({error}): {line!r}")
    if event.get("event") == "progress":
        events.append(event)
if not events:
    sys.exit("no line with \"event\": \"progress\"")
previous = 0
for event in events:
    done, total = event.get("bytesDone"), event.get("bytesTotal")
    if not isinstance(done, int) or not isinstance(total, int):
        sys.exit(f"bytesDone and bytesTotal must be integers: {event}")
    if not 0 <= done <= total:
        sys.exit(f"bytesDone outside 0..bytesTotal: {event}")
    if done < previous:
        sys.exit(f"bytesDone went back from {previous}: {event}")
    previous = done
PY
expect_exit 0 "$VMCRYPT" --progress=none --quiet decrypt "$dir/random.vmdk"
expect_same_as_raw "$dir/random.vmdk" "$TEST_TMP/random.raw" "after encrypt with --progress=json"

# --verbose logs to stderr and keeps stdout for results.
expect_exit 0 "$VMCRYPT" -v inspect "$disk"

# A line break in a file name stays inside its line of the text report; JSON keeps the name as it is.
odd_dir="$TEST_TMP/odd-name"
mkdir "$odd_dir"
odd_disk="$odd_dir/nl"$'\n'"name.vmdk"
cp "$disk" "$odd_disk"
expect_exit 0 "$VMCRYPT" inspect "$odd_disk"
grep -qxF "disk:       $odd_dir/nl name.vmdk" <<<"$LAST_STDOUT" ||
    fail "inspect does not print the file name with a line break on one line: $LAST_STDOUT"
if grep -qx "name.vmdk.*" <<<"$LAST_STDOUT"; then
    fail "a line break in the file name split a line of the inspect report: $LAST_STDOUT"
fi
expect_exit 0 "$VMCRYPT" --json inspect "$odd_disk"
[[ $("$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["disk"] == sys.argv[1])' "$odd_disk" <<<"$LAST_STDOUT") == True ]] ||
    fail "inspect --json changed the file name with a line break: $LAST_STDOUT"
