"""Hostile bundles: every attack is a real archive, installed by the real CLI or install_bundle.

Nothing of an archive is written before all of its members, its ``bundle.json`` and its
listing are checked; an existing plugin directory is never overwritten without ``--force``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Optional

import pytest

from ally_core import Host
from ally_core.bundle import BACKUP_DIR, BundleError, install_bundle
from ally_core.testing import hermetic_environ

MANIFEST = {"name": "tiny", "version": "1.0", "tools": []}


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, Optional[io.BytesIO]]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, io.BytesIO(data)


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def make_archive(
    path: Path,
    files: dict[str, bytes] | None = None,
    *,
    extra: list[tuple[tarfile.TarInfo, Any]] = (),  # type: ignore[assignment]
    info: Any = None,
    patch: dict[str, Any] | None = None,
    unlisted: tuple[str, ...] = (),
) -> Path:
    """A bundle as ``ally bundle`` writes it (``bundle.json`` with every file's sha256), from
    ``files`` (relative to ``plugin/``) plus raw ``extra`` members; ``info`` replaces
    ``bundle.json`` whole, ``patch`` updates it, ``unlisted`` files are left out of its list."""
    files = {"plugin.json": json.dumps(MANIFEST).encode(), **(files or {})}
    listing = {
        f"plugin/{rel}": hashlib.sha256(data).hexdigest()
        for rel, data in files.items()
        if rel not in unlisted
    }
    if info is None:
        info = {
            "format": 1,
            "plugin": json.loads(files["plugin.json"])["name"],
            "version": "1.0",
            "runtime": None,
            "lock": None,
            "files": listing,
            **(patch or {}),
        }
    raw = info if isinstance(info, bytes) else json.dumps(info).encode()
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(*_file("bundle.json", raw))
        tar.addfile(*_dir("plugin"))
        for rel, data in files.items():
            tar.addfile(*_file(f"plugin/{rel}", data))
        for member, data in extra:
            tar.addfile(member, data)
    return path


def _cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    environ = hermetic_environ()
    environ["ALLY_HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ally_core.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ally: error: "), lines[0]
    assert "internal error" not in lines[0]
    return lines[0]


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (symlinks not followed) with what it is."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            out[rel] = (
                f"-> {os.readlink(path)}"
                if path.is_symlink()
                else ("dir" if path.is_dir() else path.read_bytes().decode(errors="replace"))
            )
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "plugins").mkdir(parents=True)
    return home


# ---------------------------------------------------------------------------------------------
# bundles never clobber


def test_a_bundle_never_replaces_an_existing_directory_without_force(home: Path, tmp_path: Path):
    mine = home / "plugins" / "tiny"
    mine.mkdir()
    (mine / "plugin.json").write_text(json.dumps({"name": "tiny", "version": "0.9"}))
    (mine / "local-edit.py").write_text("my work\n")
    before = _tree(home / "plugins")
    archive = make_archive(tmp_path / "tiny.tar.gz", {"main.py": b"print('new')\n"})

    line = _one_error_line(_cli(home, "install", str(archive)))
    assert str(mine) in line and "--force" in line
    assert _tree(home / "plugins") == before, "nothing may change without --force"


def test_force_replaces_the_directory_and_keeps_the_old_one_as_a_backup(
    home: Path, tmp_path: Path
):
    mine = home / "plugins" / "tiny"
    mine.mkdir()
    (mine / "plugin.json").write_text(json.dumps({"name": "tiny", "version": "0.9"}))
    (mine / "local-edit.py").write_text("my work\n")
    archive = make_archive(tmp_path / "tiny.tar.gz", {"main.py": b"print('new')\n"})

    proc = _cli(home, "install", str(archive), "--force")
    assert proc.returncode == 0, proc.stderr
    backups = list((home / "plugins" / BACKUP_DIR).iterdir())
    assert len(backups) == 1
    backup = backups[0]
    assert f"moved to {backup}" in proc.stderr  # a note: stdout keeps the result (or JSON)
    assert (backup / "local-edit.py").read_text() == "my work\n"
    assert json.loads((mine / "plugin.json").read_text())["version"] == "1.0"
    assert (mine / "main.py").read_text() == "print('new')\n"
    assert not (mine / "local-edit.py").exists()
    # The backup is not discovered as a second plugin named "tiny".
    listed = json.loads(_cli(home, "list", "--json").stdout)["plugins"]
    assert [(p["name"], p["status"]) for p in listed] == [("tiny", "ready")]


def test_a_bundle_of_a_name_another_directory_declares_is_refused_even_with_force(
    home: Path, tmp_path: Path
):
    other = home / "plugins" / "my-tiny"
    other.mkdir()
    (other / "plugin.json").write_text(json.dumps({"name": "tiny"}))
    archive = make_archive(tmp_path / "tiny.tar.gz")
    line = _one_error_line(_cli(home, "install", str(archive), "--force"))
    assert str(other) in line
    assert sorted(p.name for p in (home / "plugins").iterdir()) == ["my-tiny"]


# ---------------------------------------------------------------------------------------------
# the listing in bundle.json


def _refused(home: Path, archive: Path, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        install_bundle(Host(home), archive)
    assert sorted(p.name for p in (home / "plugins").iterdir()) == [], "nothing may be left"


def test_a_file_not_listed_in_bundle_json_is_refused(home: Path, tmp_path: Path):
    archive = make_archive(
        tmp_path / "x.tar.gz",
        {"main.py": b"ok\n", "sneaky.pth": b"import os\n"},
        unlisted=("sneaky.pth",),
    )
    _refused(home, archive, "'plugin/sneaky.pth' is not listed in bundle.json")


@pytest.mark.parametrize(
    "entry",
    ["/etc/passwd", "../../etc/passwd", "plugin/../../outside.txt", "plugin/not-there.txt",
     "bundle.json", "plugin"],
)
def test_bundle_json_listing_a_file_outside_the_bundle_is_refused(
    home: Path, tmp_path: Path, entry: str
):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    archive = make_archive(tmp_path / "x.tar.gz")
    with tarfile.open(archive) as tar:
        info = json.load(tar.extractfile("bundle.json"))  # type: ignore[arg-type]
    info["files"][entry] = hashlib.sha256(b"secret").hexdigest()
    archive = make_archive(tmp_path / "y.tar.gz", info=info)
    _refused(home, archive, "which is not a file in the bundle")


@pytest.mark.parametrize(
    "lock",
    [
        {"packages": [{"name": "x", "file": "../../../etc/passwd", "sha256": "0" * 64}]},
        {"lockfile": "/etc/passwd", "packages": []},
        {"packages": [{"name": "x", "file": "missing.whl", "sha256": "0" * 64}]},
    ],
)
def test_a_lock_naming_files_outside_the_bundle_artifacts_is_refused(
    home: Path, tmp_path: Path, lock: dict[str, Any]
):
    archive = make_archive(tmp_path / "x.tar.gz", patch={"lock": lock})
    _refused(home, archive, "the lock in bundle.json names")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"[1, 2]", "must hold a JSON object"),
        (b"not json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (json.dumps({"format": 1, "plugin": "tiny", "files": []}).encode(), "files: expected"),
        (json.dumps({"format": 1, "plugin": 7, "files": {}}).encode(), "plugin: expected"),
        (
            json.dumps({"format": 1, "plugin": "t", "files": {"plugin/plugin.json": 5}}).encode(),
            "expected a sha256",
        ),
        (
            json.dumps({"format": 1, "plugin": "tiny", "files": {}, "lock": [1]}).encode(),
            "lock: expected",
        ),
        (json.dumps({"format": "1"}).encode(), "unsupported bundle format"),
    ],
)
def test_bundle_json_of_the_wrong_shape_is_one_line(
    home: Path, tmp_path: Path, raw: bytes, says: str
):
    archive = make_archive(tmp_path / "x.tar.gz", info=raw)
    line = _one_error_line(_cli(home, "install", str(archive)))
    assert says in line
    assert not list((home / "plugins").iterdir())


def test_a_bundle_without_bundle_json_is_one_line(home: Path, tmp_path: Path):
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(*_file("plugin/plugin.json", json.dumps(MANIFEST).encode()))
    assert "bundle.json missing" in _one_error_line(_cli(home, "install", str(archive)))


def test_bundle_json_naming_another_plugin_than_its_manifest_is_refused(
    home: Path, tmp_path: Path
):
    archive = make_archive(tmp_path / "x.tar.gz", patch={"plugin": "other"})
    _refused(home, archive, "names plugin 'other'")


# ---------------------------------------------------------------------------------------------
# symlinks


@pytest.mark.parametrize("order", ["a first", "b first"])
def test_a_chain_of_symlinks_leaving_the_plugin_is_refused(
    home: Path, tmp_path: Path, order: str
):
    # Each link alone stays inside (a -> the plugin itself; a/.. read as text is the plugin),
    # but b follows a: b -> a/.. is the directory above the plugin.
    links = [_link("plugin/a", "."), _link("plugin/b", "a/..")]
    if order == "b first":
        links.reverse()
    archive = make_archive(tmp_path / "x.tar.gz", extra=links)
    _refused(home, archive, "symlink leaving the plugin: 'plugin/b'")


@pytest.mark.parametrize(
    "links",
    [
        [("plugin/up", "..")],
        [("plugin/info", "../bundle.json")],
        [("plugin/d", "sub/../.."), ("plugin/sub/x", "y")],
        [("plugin/loop1", "loop2"), ("plugin/loop2", "loop1")],
        [("plugin/abs", "/etc")],
        [("plugin/deep", "a/b"), ("plugin/a", "."), ("plugin/b", "..")],
    ],
)
def test_symlinks_leading_out_of_the_plugin_or_looping_are_refused(
    home: Path, tmp_path: Path, links: list[tuple[str, str]]
):
    archive = make_archive(tmp_path / "x.tar.gz", extra=[_link(n, t) for n, t in links])
    _refused(home, archive, "symlink leaving the plugin")


def test_links_that_would_be_followed_exponentially_often_are_refused_at_once(
    home: Path, tmp_path: Path
):
    # l0 -> l1/l1, l1 -> l2/l2, ...: 2**30 links to follow. Like the kernel, ally gives up
    # after 40 in all, instead of hanging.
    links = [_link(f"plugin/l{i}", f"l{i + 1}/l{i + 1}") for i in range(30)]
    archive = make_archive(tmp_path / "x.tar.gz", extra=[*links, _link("plugin/l30", ".")])
    line = _one_error_line(_cli(home, "install", str(archive), timeout=60))
    assert "symlink leaving the plugin" in line


def test_a_member_behind_a_symlinked_directory_is_refused(home: Path, tmp_path: Path):
    # Listed and hashed like any file; on disk it would be written through the link.
    archive = make_archive(
        tmp_path / "x.tar.gz",
        {"d/x": b"x\n"},
        extra=[_dir("plugin/sub"), _link("plugin/d", "sub")],
    )
    _refused(home, archive, "lies behind a symlink")


def test_symlinks_staying_inside_the_plugin_are_kept(home: Path, tmp_path: Path):
    archive = make_archive(
        tmp_path / "x.tar.gz",
        {"lib/real.py": b"X = 1\n"},
        extra=[
            _link("plugin/alias.py", "lib/real.py"),
            _link("plugin/lib/up.json", "../plugin.json"),
            _link("plugin/self", "."),
        ],
    )
    done = install_bundle(Host(home), archive)
    assert (done.plugin_dir / "alias.py").read_text() == "X = 1\n"
    assert json.loads((done.plugin_dir / "lib" / "up.json").read_text())["name"] == "tiny"
    assert os.readlink(done.plugin_dir / "self") == "."


def test_a_member_twice_in_the_archive_is_refused(home: Path, tmp_path: Path):
    # Listed and hashed for its first copy; the second would replace it on disk.
    archive = make_archive(
        tmp_path / "x.tar.gz",
        {"main.py": b"good\n"},
        extra=[_file("plugin/main.py", b"evil\n")],
    )
    _refused(home, archive, "appears twice")


@pytest.mark.parametrize("kind", ["fifo", "chr", "hardlink"])
def test_special_members_are_refused(home: Path, tmp_path: Path, kind: str):
    member = tarfile.TarInfo("plugin/special")
    member.type = {"fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "hardlink": tarfile.LNKTYPE}[
        kind
    ]
    member.linkname = "plugin/plugin.json" if kind == "hardlink" else ""
    member.devmajor, member.devminor = 1, 5
    archive = make_archive(tmp_path / "x.tar.gz", extra=[(member, None)])
    _refused(home, archive, "unsupported member type")


# ---------------------------------------------------------------------------------------------
# sizes


def test_a_member_larger_than_the_limit_is_refused_before_it_is_unpacked(
    home: Path, tmp_path: Path
):
    archive = make_archive(tmp_path / "x.tar.gz", {"zeros.bin": bytes(2 << 20)})
    assert archive.stat().st_size < 64 << 10  # a gzip bomb in miniature
    line = _one_error_line(
        _cli(home, "install", str(archive), env={"ALLY_BUNDLE_MAX_FILE": "1M"})
    )
    assert "plugin/zeros.bin unpacks to 2097152 bytes" in line and "bundle_max_file" in line
    assert not list((home / "plugins").iterdir())
    # Within the limits it installs.
    proc = _cli(home, "install", str(archive), env={"ALLY_BUNDLE_MAX_FILE": "3M"})
    assert proc.returncode == 0, proc.stderr


def test_more_bytes_in_all_than_the_limit_are_refused(home: Path, tmp_path: Path):
    files = {f"part{i}.bin": bytes(600 << 10) for i in range(3)}
    archive = make_archive(tmp_path / "x.tar.gz", files)
    line = _one_error_line(
        _cli(home, "install", str(archive), env={"ALLY_BUNDLE_MAX_TOTAL": "1M"})
    )
    assert "more than 1048576 bytes (bundle_max_total)" in line
    assert not list((home / "plugins").iterdir())


def test_the_default_limit_refuses_a_member_claiming_terabytes_before_reading_it(
    home: Path, tmp_path: Path
):
    # A header that claims 3 TiB, with no data behind it: refused from the header alone.
    member = tarfile.TarInfo("plugin/huge.bin")
    member.size = 3 << 40
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(*_file("bundle.json", b"{}"))
        tar.addfile(*_file("plugin/plugin.json", json.dumps(MANIFEST).encode()))
        buf.write(member.tobuf(tarfile.PAX_FORMAT))
    archive = tmp_path / "huge.tar.gz"
    archive.write_bytes(gzip.compress(buf.getvalue()))
    line = _one_error_line(_cli(home, "install", str(archive)))
    assert "plugin/huge.bin unpacks to 3298534883328 bytes" in line


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1X"])
def test_a_bad_size_limit_setting_is_one_line(home: Path, tmp_path: Path, value: str):
    archive = make_archive(tmp_path / "x.tar.gz")
    line = _one_error_line(_cli(home, "install", str(archive), env={"ALLY_BUNDLE_MAX_FILE": value}))
    assert "$ALLY_BUNDLE_MAX_FILE" in line


# ---------------------------------------------------------------------------------------------
# unpacking onto a disk that refuses


def test_a_plugins_dir_that_cannot_be_written_is_one_line(home: Path, tmp_path: Path):
    # A file where the plugins directory should be: nothing can be created in it.
    (home / "plugins").rmdir()
    (home / "plugins").write_text("not a directory")
    archive = make_archive(tmp_path / "x.tar.gz")
    line = _one_error_line(_cli(home, "install", str(archive)))
    assert "cannot install" in line and str(home / "plugins") in line


def test_a_full_disk_while_unpacking_is_one_line_and_leaves_nothing(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    probe = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    try:
        home = mount / "home"
        (home / "plugins").mkdir(parents=True)
        payload = os.urandom(2 << 20)  # incompressible, larger than the disk
        archive = make_archive(tmp_path / "x.tar.gz", {"big.bin": payload})
        line = _one_error_line(_cli(home, "install", str(archive)))
        assert "No space left on device" in line
        assert not list((home / "plugins").iterdir()), "the staging directory must be gone"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ---------------------------------------------------------------------------------------------
# making a bundle


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_bundling_a_plugin_with_a_fifo_or_device_is_refused(
    make_plugin, ally_home: Path, tmp_path: Path, kind: str
):
    plugin = make_plugin("tiny", {"version": "1", "tools": []}, {"main.py": "x = 1\n"})
    special = plugin / "data" / "special"
    special.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(special)
    else:
        try:  # /dev/zero's numbers: copying it would never end
            os.mknod(special, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        except PermissionError:
            pytest.skip("cannot create a device node here")
    archive = tmp_path / "tiny.tar.gz"
    line = _one_error_line(_cli(ally_home, "bundle", "tiny", "-o", str(archive), timeout=60))
    assert str(special) in line
    assert ("FIFO" if kind == "fifo" else "character device") in line
    assert not archive.exists()


def test_bundling_to_a_place_that_cannot_be_written_is_one_line(
    make_plugin, ally_home: Path, tmp_path: Path
):
    make_plugin("tiny", {"version": "1", "tools": []}, {"main.py": "x = 1\n"})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = _one_error_line(_cli(ally_home, "bundle", "tiny", "-o", str(blocker / "tiny.tar.gz")))
    assert "tiny: cannot write the bundle" in line and str(blocker) in line


def test_a_bundle_of_a_name_two_blocked_directories_declare_is_refused(
    home: Path, tmp_path: Path
):
    for directory in ("a-one", "b-two"):
        (home / "plugins" / directory).mkdir()
        (home / "plugins" / directory / "plugin.json").write_text(json.dumps({"name": "tiny"}))
    archive = make_archive(tmp_path / "tiny.tar.gz")
    line = _one_error_line(_cli(home, "install", str(archive)))
    assert "a plugin named 'tiny' is already installed at" in line
    assert sorted(p.name for p in (home / "plugins").iterdir()) == ["a-one", "b-two"]
