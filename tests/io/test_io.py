"""Atomic writes, the one temp-name scheme and sweeper, the directory swap, the file-set hash."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

from toptune.io.atomic import AtomicFile, discard_dir, staging_dir, swap_dir, temp_path, write_atomic
from toptune.io.debris import clear_debris
from toptune.io.hashing import file_sha256, files_sha256, path_sha256


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_temp_name_for_files_and_directories(tmp_path):
    here = f"{socket.gethostname()}-{os.getpid()}"
    assert temp_path(tmp_path / "manifest.json").name == f".manifest.json.tmp-{here}"
    assert temp_path(tmp_path / "adapter", "old").name == f".adapter.old-{here}"
    assert staging_dir(tmp_path / "adapter") == tmp_path / f".adapter.tmp-{here}" / "adapter"


def test_atomic_file_is_whole_or_absent(tmp_path):
    entry = write_atomic(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}" and entry == {
        "bytes": 2,
        "sha256": hashlib.sha256(b"{}").hexdigest(),
    }
    try:
        with AtomicFile(tmp_path / "b.bin") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_swap_dir_replaces_the_old_directory_whole(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staged = staging_dir(final)
    staged.mkdir(parents=True)
    (staged / "sub").mkdir()
    (staged / "sub" / "new.txt").write_text("new")
    assert swap_dir(staged, final) == final
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["sub", "sub/new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"], "no .tmp- container, no .old- left"
    # A checkpoint is staged at temp_path(final) itself (no container); a failed run's staging is discarded.
    staged = temp_path(final)
    staged.mkdir()
    swap_dir(staged, final)
    assert list(final.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    staging_dir(final).mkdir(parents=True)
    discard_dir(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_swap_killed_between_its_renames_is_undone_by_the_sweeper(tmp_path):
    dead, host = dead_pid(), socket.gethostname()
    old = tmp_path / f".adapter.old-{host}-{dead}"  # the old bundle set aside; the new one never renamed in
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"w")
    (tmp_path / f".adapter.tmp-{host}-{dead}").mkdir()
    (tmp_path / f".shard.bin.tmp-{host}-{dead}").write_bytes(b"half a shard")
    done = clear_debris(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"] and len(done) == 3
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == b"w"


def test_files_sha256_names_and_contents_in_name_order(tmp_path):
    for name, data in (("b.safetensors", b"bb"), ("a.safetensors", b"a" * 300_000)):
        (tmp_path / name).write_bytes(data)
    lines = "".join(
        f"{n}:{hashlib.sha256(d).hexdigest()}\n"
        for n, d in (("a.safetensors", b"a" * 300_000), ("b.safetensors", b"bb"))
    )
    want = hashlib.sha256(lines.encode()).hexdigest()  # the format bundles store in toptune.json
    assert files_sha256([tmp_path / "b.safetensors", tmp_path / "a.safetensors"]) == want
    assert file_sha256(tmp_path / "b.safetensors") == hashlib.sha256(b"bb").hexdigest()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"x")
    assert path_sha256(tmp_path / "d") == hashlib.sha256(f"x:{hashlib.sha256(b'x').hexdigest()}\n".encode()).hexdigest()
    assert path_sha256(tmp_path / "d" / "x") == path_sha256(tmp_path / "d")
    (tmp_path / "d" / "x").write_bytes(b"y")
    assert path_sha256(tmp_path / "d") != hashlib.sha256(f"x:{hashlib.sha256(b'x').hexdigest()}\n".encode()).hexdigest()
