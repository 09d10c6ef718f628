#!/usr/bin/python3
"""Write af_split.txt: LUKS1 AF-splitter vectors from an implementation independent of vmcrypt.

The splitter follows the LUKS1 On-Disk Format Specification 1.2.3, with Python's hashlib.
The "random" stripes come from SHA-256 in counter mode over the vector number, so rerunning this script
writes the same file: python3 tests/data/luks1/make_af_split_vectors.py > tests/data/af_split.txt
"""

import hashlib


def diffuse(data: bytes, hash_name: str) -> bytes:
    size = hashlib.new(hash_name).digest_size
    out = b""
    for index, offset in enumerate(range(0, len(data), size)):
        block = data[offset:offset + size]
        out += hashlib.new(hash_name, index.to_bytes(4, "big") + block).digest()[:len(block)]
    return out


def split(key: bytes, stripes: int, hash_name: str, random: bytes) -> bytes:
    d = bytes(len(key))
    for s in range(stripes - 1):
        stripe = random[s * len(key):(s + 1) * len(key)]
        d = diffuse(bytes(a ^ b for a, b in zip(d, stripe)), hash_name)
    return random + bytes(a ^ b for a, b in zip(d, key))


def stream(seed: str, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed} {counter}".encode()).digest()
        counter += 1
    return out[:length]


CASES = [
    # (hash, key size, stripes): digest-sized, partial last block, single stripe, QEMU's key size
    ("sha1", 16, 4),
    ("sha1", 20, 3),
    ("sha1", 33, 5),
    ("sha256", 64, 1),
    ("sha256", 64, 2),
    ("sha256", 64, 7),
    ("sha256", 45, 6),
    ("sha512", 64, 3),
    ("sha512", 100, 4),
]

print("# LUKS1 AF-splitter vectors (test_luks_crypto_vectors.cpp), written by luks1/make_af_split_vectors.py,")
print("# a Python hashlib implementation of the LUKS1 On-Disk Format Specification 1.2.3.")
print("#")
print("#   Hash     sha1, sha256 or sha512 (the diffusion hash)")
print("#   Stripes  the stripe count")
print("#   Key      the key in hex")
print("#   Random   stripes 0 to Stripes-2 in hex (empty for one stripe)")
print("#   Split    all stripes in hex: Random followed by the last stripe")
for number, (hash_name, key_size, stripes) in enumerate(CASES):
    key = stream(f"key {number}", key_size)
    random = stream(f"random {number}", (stripes - 1) * key_size)
    print()
    print(f"# {hash_name}, {key_size}-byte key, {stripes} stripes")
    print(f"Hash = {hash_name}")
    print(f"Stripes = {stripes}")
    print(f"Key = {key.hex()}")
    print(f"Random = {random.hex()}")
    print(f"Split = {split(key, stripes, hash_name, random).hex()}")
