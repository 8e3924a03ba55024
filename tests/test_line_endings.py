"""A clone on Windows or WSL (git's core.autocrlf=true) checks out every file byte for byte
as committed: results, records, templates and the C kernels are hashed by their bytes, so a
converted line ending would make every committed result look stale (.gitattributes)."""

import subprocess

from pipeline import REPO


def test_a_clone_with_autocrlf_checks_out_the_committed_bytes(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "-c", "core.autocrlf=true", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=clone, capture_output=True, check=True).stdout.decode().split("\0")
    files = [f for f in files if f]
    differ = []
    for name in files:
        committed = subprocess.run(["git", "cat-file", "blob", f"HEAD:{name}"], cwd=clone, capture_output=True, check=True).stdout
        if (clone / name).read_bytes() != committed:
            differ.append(name)
    assert not differ, f"{len(differ)} of {len(files)} files differ from their committed bytes, e.g. {differ[:5]}"
