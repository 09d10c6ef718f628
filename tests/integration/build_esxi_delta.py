#!/usr/bin/python3
"""Builds an ESXi snapshot delta (vmfsSparse/COWD or seSparse) over a parent VMDK, for tests.

    build_esxi_delta.py cowd|sesparse PARENT.vmdk DELTA.vmdk [--grain-sectors N] [--dirty]
                        [--write OFFSET:LENGTH:BYTE]... [--zero OFFSET:LENGTH]... [--unmap OFFSET:LENGTH]...

DELTA.vmdk becomes a descriptor as ESXi writes it (createType "vmfsSparse" or "seSparse", parentCID set
to the parent's CID, parentFileNameHint relative to the delta's folder), and its extent file
DELTA-delta.vmdk (COWD) or DELTA-sesparse.vmdk (seSparse). Offsets and lengths are bytes and must be
grain-aligned; BYTE fills the range. --zero makes zero grains and --unmap unmapped grains (seSparse
only). --dirty sets the seSparse volatile header's replay_journal flag.

Layouts follow VMware's Virtual Disk Format 1.1 for COWD and qemu's block/vmdk.c reader for seSparse:
little-endian integers, sectors of 512 bytes.
"""

import argparse
import os
import random
import re
import struct
import sys

SECTOR = 512


def read_descriptor(path):
    with open(path, "rb") as disk:
        header = disk.read(512)
        if header[:4] == b"KDMV":
            offset, size = struct.unpack_from("<QQ", header, 28)
            disk.seek(offset * SECTOR)
            text = disk.read(size * SECTOR)
        else:
            disk.seek(0)
            text = disk.read()
    return text.split(b"\0", 1)[0].decode()


def parent_facts(path):
    text = read_descriptor(path)
    cid = re.search(r"^CID=([0-9a-fA-F]+)\s*$", text, re.M).group(1)
    sectors = sum(int(m.group(1)) for m in re.finditer(r"^\s*(?:RW|RDONLY)\s+(\d+)\s", text, re.M))
    return cid, sectors


def ranges(values):
    result = []
    for value in values or []:
        parts = value.split(":")
        result.append(tuple(int(part, 0) for part in parts))
    return result


def build_cowd(capacity, grain, writes):
    gt_entries = 4096
    gd_entries = -(-capacity // (gt_entries * grain))
    gd_offset = 4
    gd_sectors = -(-gd_entries * 4 // SECTOR)
    next_free = gd_offset + gd_sectors
    tables = {}
    grains = {}
    values = {}
    for offset, length, value in writes:
        assert offset % (grain * SECTOR) == 0 and length % (grain * SECTOR) == 0, "COWD writes must be grain-aligned"
        for g in range(offset // SECTOR // grain, (offset + length) // SECTOR // grain):
            table = g // gt_entries
            if table not in tables:
                tables[table] = next_free
                next_free += gt_entries * 4 // SECTOR
            if g not in grains:
                grains[g] = next_free
                next_free += grain
            values[g] = value
    image = bytearray(next_free * SECTOR)
    header = struct.pack("<4sIIIIIII", b"COWD", 1, 3, capacity, grain, gd_offset, gd_entries, next_free)
    image[0:len(header)] = header
    for table, sector in tables.items():
        struct.pack_into("<I", image, gd_offset * SECTOR + table * 4, sector)
    for g, sector in grains.items():
        struct.pack_into("<I", image, tables[g // gt_entries] * SECTOR + (g % gt_entries) * 4, sector)
        length = min(grain, capacity - g * grain) * SECTOR
        image[sector * SECTOR:sector * SECTOR + length] = fill(values[g], g * grain * SECTOR, length)
    return bytes(image)


def fill(value, offset, length):
    if value >= 0:
        return bytes([value]) * length
    generator = random.Random(offset)
    return bytes(generator.getrandbits(8) for _ in range(length))


def build_sesparse(capacity, writes, zeros, unmaps, dirty):
    grain = 8
    table_entries = 4096
    grain_count = -(-capacity // grain)
    gd_entries = -(-grain_count // table_entries)
    volatile_offset, journal_header_offset, journal_offset, journal_size = 1, 2, 3, 8
    gd_offset = journal_offset + journal_size
    gd_sectors = -(-gd_entries * 8 // SECTOR)
    tables_offset = gd_offset + gd_sectors
    tables_size = gd_entries * 64
    bitmap_offset = tables_offset + tables_size
    backmap_offset = bitmap_offset + 1
    grains_offset = backmap_offset + 1
    grains_size = grain_count * grain

    entries = {}
    data = {}
    for offset, length, value in writes:
        assert offset % 4096 == 0 and length % 4096 == 0, "seSparse writes must be 4 KiB-aligned"
        for g in range(offset // 4096, (offset + length) // 4096):
            data[g] = value
    for kind, items in ((2, zeros), (1, unmaps)):
        for offset, length in items:
            assert offset % 4096 == 0 and length % 4096 == 0, "seSparse ranges must be 4 KiB-aligned"
            for g in range(offset // 4096, (offset + length) // 4096):
                data.pop(g, None)
                entries[g] = kind << 60
    index = 0
    placed = {}
    for g in sorted(data):
        entries[g] = (3 << 60) | ((index & 0xfff) << 48) | (index >> 12)
        placed[g] = index
        index += 1
    tables = {}
    for g in sorted(entries):
        tables.setdefault(g // table_entries, len(tables))

    image = bytearray((grains_offset + index * grain) * SECTOR)
    header = struct.pack("<26Q", 0xCAFEBABE, 0x200000001, capacity, grain, 64, 0, 0, 0, 0, 0,
                         volatile_offset, 1, journal_header_offset, 1, journal_offset, journal_size,
                         gd_offset, gd_sectors, tables_offset, tables_size, bitmap_offset, 1,
                         backmap_offset, 1, grains_offset, grains_size)
    image[0:len(header)] = header
    struct.pack_into("<4Q", image, volatile_offset * SECTOR, 0xCAFECAFE, len(tables), 1, 1 if dirty else 0)
    for table, table_index in tables.items():
        struct.pack_into("<Q", image, gd_offset * SECTOR + table * 8, 0x1000000000000000 | table_index)
    for g, entry in entries.items():
        table_index = tables[g // table_entries]
        struct.pack_into("<Q", image, (tables_offset + table_index * 64) * SECTOR + (g % table_entries) * 8, entry)
    for g, grain_index in placed.items():
        start = (grains_offset + grain_index * grain) * SECTOR
        length = min(grain, capacity - g * grain) * SECTOR
        image[start:start + length] = fill(data[g], g * 4096, length)
    return bytes(image)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("format", choices=["cowd", "sesparse"])
    parser.add_argument("parent")
    parser.add_argument("delta")
    parser.add_argument("--grain-sectors", type=int, default=1)
    parser.add_argument("--dirty", action="store_true")
    parser.add_argument("--write", action="append", help="OFFSET:LENGTH:BYTE (BYTE -1 for seeded random data)")
    parser.add_argument("--zero", action="append")
    parser.add_argument("--unmap", action="append")
    args = parser.parse_args()

    parent_cid, capacity = parent_facts(args.parent)
    writes = ranges(args.write)
    folder = os.path.dirname(os.path.abspath(args.delta))
    stem = os.path.basename(args.delta)[:-len(".vmdk")]
    if args.format == "cowd":
        extent_name, create_type, extent_type = stem + "-delta.vmdk", "vmfsSparse", "VMFSSPARSE"
        image = build_cowd(capacity, args.grain_sectors, writes)
    else:
        extent_name, create_type, extent_type = stem + "-sesparse.vmdk", "seSparse", "SESPARSE"
        image = build_sesparse(capacity, writes, ranges(args.zero), ranges(args.unmap), args.dirty)
    with open(os.path.join(folder, extent_name), "wb") as extent:
        extent.write(image)

    cid = "%08x" % random.Random(args.delta).getrandbits(32)
    hint = os.path.relpath(os.path.abspath(args.parent), folder)
    descriptor = (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid}\n"
        f"parentCID={parent_cid}\n"
        'isNativeSnapshot="no"\n'
        f'createType="{create_type}"\n'
        f'parentFileNameHint="{hint}"\n'
        "# Extent description\n"
        f'RW {capacity} {extent_type} "{extent_name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.longContentID = "0123456789abcdef01234567{cid}"\n'
    )
    with open(args.delta, "w") as out:
        out.write(descriptor)


if __name__ == "__main__":
    sys.exit(main())
