"""The local Ray the tool starts: node address 127.0.0.1, every port on loopback, no dashboard
(so no job server), a client without the cluster's token is refused, and its workers run the
setup hook that quiets what polls the absent State API."""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent("""
    import json, os, sys
    from orchestrator.launcher import ensure_ray
    ensure_ray(log=lambda *a: None, temp_dir=sys.argv[1], num_cpus=1)
    import ray
    from trainables.ray_hooks import PG_CLEANER_LOGGER

    @ray.remote(num_cpus=0)
    def cleaner_log_level():  # in a worker process: what the setup hook left
        import logging
        return logging.getLogger(PG_CLEANER_LOGGER).getEffectiveLevel()

    ctx = ray.get_runtime_context()
    print(json.dumps({"node": ray.nodes()[0]["NodeManagerAddress"], "gcs": ctx.gcs_address,
                      "pid": os.getpid(), "cleaner_level": ray.get(cleaner_log_level.remote())}), flush=True)
    sys.stdin.readline()  # hold the cluster until the test has looked
    ray.shutdown()
""")


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket owned by `pids` (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            out.append((_address(addr, width), int(port, 16)))
    return out


def _address(hex_addr: str, width: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    flat = b"".join(words)
    if flat[:12] == b"\0" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in flat[12:])  # IPv4-mapped
    return ":".join(flat[i:i + 2].hex() for i in range(0, 16, 2))


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in found]
        found.update(kids)
        frontier.extend(kids)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_local_ray_is_loopback_only_without_dashboard_and_refuses_a_wrong_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    proc = subprocess.Popen([sys.executable, "-c", PROBE, ray_tmp], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["node"] == "127.0.0.1" and info["gcs"].startswith("127.0.0.1:")
        # No dashboard, no State API: the hook silences Ray Train's placement-group cleaner,
        # which would warn every few seconds that it cannot reach that API
        assert info["cleaner_level"] == logging.ERROR
        ports = _listening(_descendants(info["pid"]))
        assert ports, "found none of Ray's listening sockets"
        assert all(addr == "127.0.0.1" for addr, _ in ports), ports
        assert 8265 not in {port for _, port in ports}  # no dashboard, hence no job server
        wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32, "HOME": str(tmp_path),
                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        client = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={info['gcs']!r}); "
                                 "print('CONNECTED')"], env=wrong, capture_output=True, text=True, timeout=120)
        assert client.returncode != 0 and "CONNECTED" not in client.stdout
        assert "InvalidAuthToken" in client.stderr  # refused by the GCS, not by the client itself
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
