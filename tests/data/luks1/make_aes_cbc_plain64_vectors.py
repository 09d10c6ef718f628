#!/usr/bin/python3
"""Write aes_cbc_plain64.txt: legacy qcow AES (crypt method 1) vectors from Python `cryptography`.

Each sector is AES-128-CBC encrypted on its own with IV = the sector number as 64-bit little-endian,
zero-padded to 16 bytes; the key is the password's first 16 bytes, zero-padded. Plaintexts come from
SHA-256 in counter mode, so rerunning writes the same file:
python3 tests/data/luks1/make_aes_cbc_plain64_vectors.py > tests/data/aes_cbc_plain64.txt
"""

import hashlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def stream(seed: str, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed} {counter}".encode()).digest()
        counter += 1
    return out[:length]


def encrypt(key: bytes, first_sector: int, plaintext: bytes) -> bytes:
    out = b""
    for i in range(0, len(plaintext), 512):
        iv = (first_sector + i // 512).to_bytes(8, "little") + bytes(8)
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        out += encryptor.update(plaintext[i:i + 512]) + encryptor.finalize()
    return out


CASES = [
    # (password, first sector, sectors): short password, 16 bytes, longer than 16 (truncated),
    # a sector number above 2^32, and the last sector numbers before 2^64.
    (b"PASS", 0, 1),
    (b"0123456789abcdef", 7, 3),
    (b"a passphrase longer than sixteen bytes", 1000, 2),
    (b"PASS", 0x123456789, 2),
    (b"PASS", 2**64 - 2, 2),
]

print("# Legacy qcow AES (AES-128-CBC, plain64 IV) vectors (test_luks_crypto_vectors.cpp), written by")
print("# luks1/make_aes_cbc_plain64_vectors.py with Python `cryptography`.")
print("#")
print("#   Password     the password in hex; the key is its first 16 bytes, zero-padded")
print("#   FirstSector  the sector number of the first 512-byte sector, decimal")
print("#   Plaintext    whole sectors in hex")
print("#   Ciphertext   the encrypted sectors in hex")
for number, (password, first_sector, sectors) in enumerate(CASES):
    plaintext = stream(f"plaintext {number}", 512 * sectors)
    key = (password + bytes(16))[:16]
    print()
    print(f"# password {password.decode()!r}, sectors {first_sector} to {first_sector + sectors - 1}")
    print(f"Password = {password.hex()}")
    print(f"FirstSector = {first_sector}")
    print(f"Plaintext = {plaintext.hex()}")
    print(f"Ciphertext = {encrypt(key, first_sector, plaintext).hex()}")
