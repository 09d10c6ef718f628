#!/usr/bin/env bash
# Encrypts and decrypts qcow2 images that qemu-img made in every layout vmcrypt supports, each holding
# an ext4 file system and qemu-io pattern writes. After encrypt, QEMU must read the same guest data
# with the secret vmcrypt prints (qemu-img compare), find the image clean (qemu-img check) and
# cryptsetup must accept the LUKS header. After decrypt, the image must be plain and clean again,
# e2fsck must pass and libqcow must read the same bytes as qemu-img.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib_qcow2.sh"

QCOW2_IMAGE_SIZE=64M

roundtrip() {
    local name=$1
    shift
    local dir="$TEST_TMP/$name"
    local image="$dir/disk.qcow2" raw="$dir/plain.raw"
    mkdir "$dir"
    make_qcow2_ext4 "$image" "$raw" "$@"

    expect_exit 0 "$VMCRYPT" encrypt "$image"
    if grep -qF "$PLAINTEXT_MARKER" "$image"; then
        fail "$name: the plaintext marker is still in $image after encrypt"
    fi
    expect_exit 0 "$VMCRYPT" inspect --json "$image"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == vmcrypt ]] ||
        fail "$name: expected inspect to report vmcrypt encryption after encrypt"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.allocation.compressedClusters) == 0 ]] ||
        fail "$name: expected no compressed clusters after encrypt"

    # QEMU reads the encrypted image with the secret and finds it identical and clean.
    local secret code=0
    secret=$("$VMCRYPT" qemu-secret "$image")
    local encrypted_opts="driver=qcow2,file.filename=$image,encrypt.key-secret=sec0"
    qemu-img compare --object "$secret" --image-opts "$encrypted_opts" "driver=raw,file.filename=$raw" \
        >"$TEST_TMP/compare.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$name: qemu-img compare with the secret exited $code: $(cat "$TEST_TMP/compare.out")"
    qemu-img check --object "$secret" --image-opts "$encrypted_opts" >"$TEST_TMP/check.out" 2>&1 || code=$?
    [[ $code == 0 ]] || fail "$name: qemu-img check of the encrypted image exited $code: $(cat "$TEST_TMP/check.out")"

    # cryptsetup accepts the LUKS header area and opens key slot 0 with the raw secret.
    local area_offset area_length
    area_offset=$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.offset)
    area_length=$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.length)
    dd if="$image" of="$dir/luks.bin" bs=512 skip=$((area_offset / 512)) count=$((area_length / 512)) status=none
    cryptsetup luksDump "$dir/luks.bin" >"$TEST_TMP/luksdump.out" 2>&1 ||
        fail "$name: cryptsetup luksDump rejected the LUKS area: $(cat "$TEST_TMP/luksdump.out")"
    grep -q "xts-plain64" "$TEST_TMP/luksdump.out" || fail "$name: luksDump shows no xts-plain64: $(cat "$TEST_TMP/luksdump.out")"
    "$VMCRYPT" qemu-secret --form raw "$image" | tr -d '\n' |
        cryptsetup open --test-passphrase "$dir/luks.bin" --key-file=- ||
        fail "$name: cryptsetup could not open key slot 0 with the secret vmcrypt printed"

    expect_exit 0 "$VMCRYPT" decrypt "$image"
    qemu-img compare -f qcow2 -F raw "$image" "$raw" >"$TEST_TMP/compare.out" 2>&1 ||
        fail "$name: the decrypted image differs from the original: $(cat "$TEST_TMP/compare.out")"
    qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
        fail "$name: qemu-img check of the decrypted image failed (leaks or errors): $(cat "$TEST_TMP/check.out")"
    expect_exit 0 "$VMCRYPT" inspect --json "$image"
    echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.encryption) == none ]] ||
        fail "$name: expected no encryption after decrypt"
    [[ $(json_path "$TEST_TMP/inspect.json" qcow2.extensions) != *0x537be77* ]] ||
        fail "$name: the crypto header extension is still there after decrypt"

    qemu-img convert -f qcow2 -O raw "$image" "$dir/decrypted.raw"
    e2fsck -fn "$dir/decrypted.raw" >"$TEST_TMP/e2fsck.out" 2>&1 ||
        fail "$name: e2fsck -fn of the decrypted file system failed: $(cat "$TEST_TMP/e2fsck.out")"
    if [[ $* == *zstd* || $* == *extended_l2=on* ]]; then
        note "$name: libqcow 20201213 does not read zstd or extended L2 images; skipped its check"
    else
        expect_libqcow_reads "$image" "$raw"
    fi
    rm -rf "$dir"
}

roundtrip default
roundtrip cluster-2m -o cluster_size=2M
roundtrip cluster-1k -o cluster_size=1024,refcount_bits=64
roundtrip compat-0.10 -o compat=0.10
roundtrip prealloc-metadata -o preallocation=metadata
roundtrip prealloc-full -o preallocation=full,cluster_size=1M
roundtrip compressed-zlib -c
roundtrip compressed-zstd -c -o compression_type=zstd
roundtrip extended-l2 -o extended_l2=on
roundtrip lazy-refcounts -o lazy_refcounts=on,refcount_bits=1

roundtrip cluster-512 -o cluster_size=512

# With 512-byte clusters the record is in sectors 2 to 7 of the LUKS area, which the header extension
# 0x766d7270 names. QEMU adding a LUKS key slot does not touch it, a record that grows with a new key
# slot is rewritten there, and a deep rekey moves it into its new LUKS area.
dir="$TEST_TMP/cluster-512-record"
mkdir "$dir"
image="$dir/disk.qcow2"
make_qcow2_ext4 "$image" "$dir/plain.raw" -o cluster_size=512
head -c 32 /dev/urandom >"$TEST_TMP/extra.key"
expect_exit 0 "$VMCRYPT" encrypt "$image"
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.extensions) == *0x766d7270* ]] ||
    fail "cluster-512: expected the record pointer extension 0x766d7270 in the header"
[[ $(json_path "$TEST_TMP/inspect.json" qcow2.extensions) != *'"0x766d6372"'* ]] ||
    fail "cluster-512: the record itself must not be in cluster 0"
area_offset=$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.offset)
dd if="$image" bs=512 skip=$((area_offset / 512 + 2)) count=6 status=none | grep -a "^state=encrypted" >/dev/null ||
    fail "cluster-512: the record is not in sectors 2 to 7 of the LUKS area"

secret=$("$VMCRYPT" qemu-secret "$image")
qemu_img_retrying amend --object "$secret" --object secret,id=sec1,data=OTHER \
    --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
    -o encrypt.keyslot=1,encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10
qemu-img compare --object secret,id=sec1,data=OTHER \
    --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec1" "driver=raw,file.filename=$dir/plain.raw" \
    >"$TEST_TMP/compare.out" 2>&1 ||
    fail "cluster-512: QEMU does not read the image with the key slot it added: $(cat "$TEST_TMP/compare.out")"

# A deep rekey builds a new LUKS area, and its final record write moves the record there.
expect_exit 0 "$VMCRYPT" rekey --deep "$image"
secret=$("$VMCRYPT" qemu-secret "$image")
qemu-img compare --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
    "driver=raw,file.filename=$dir/plain.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "cluster-512: QEMU does not read the image after a deep rekey: $(cat "$TEST_TMP/compare.out")"
qemu-img check --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
    >"$TEST_TMP/check.out" 2>&1 || fail "cluster-512: qemu-img check after a deep rekey: $(cat "$TEST_TMP/check.out")"
expect_exit 0 "$VMCRYPT" inspect --json "$image"
echo "$LAST_STDOUT" >"$TEST_TMP/inspect.json"
new_area_offset=$(json_path "$TEST_TMP/inspect.json" qcow2.luksArea.offset)
[[ $new_area_offset != "$area_offset" ]] || fail "cluster-512: the deep rekey kept the old LUKS area"
dd if="$image" bs=512 skip=$((new_area_offset / 512 + 2)) count=6 status=none | grep -a "^state=encrypted" >/dev/null ||
    fail "cluster-512: the record is not in sectors 2 to 7 of the new LUKS area after a deep rekey"

expect_exit 0 "$VMCRYPT" keys add --new-key-file "$TEST_TMP/extra.key" "$image"
expect_exit 0 "$VMCRYPT" keys list "$image"
[[ $(grep -c '^slot ' <<<"$LAST_STDOUT") == 2 ]] ||
    fail "cluster-512: expected two vmcrypt key slots after QEMU's amend and keys add, got: $LAST_STDOUT"
qemu-img check --object "$secret" --image-opts "driver=qcow2,file.filename=$image,encrypt.key-secret=sec0" \
    >"$TEST_TMP/check.out" 2>&1 || fail "cluster-512: qemu-img check after keys add: $(cat "$TEST_TMP/check.out")"
expect_exit 0 "$VMCRYPT" decrypt --key-file "$TEST_TMP/extra.key" "$image"
qemu-img compare -f qcow2 -F raw "$image" "$dir/plain.raw" >"$TEST_TMP/compare.out" 2>&1 ||
    fail "cluster-512: the decrypted image differs from the original: $(cat "$TEST_TMP/compare.out")"
qemu-img check "$image" >"$TEST_TMP/check.out" 2>&1 ||
    fail "cluster-512: qemu-img check of the decrypted image failed: $(cat "$TEST_TMP/check.out")"
[[ $(qemu-img info --output=json "$image") != *encrypt* ]] || fail "cluster-512: the decrypted image is still encrypted"
