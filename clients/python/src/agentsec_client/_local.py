"""A local ``agentsec serve`` process, started from a SecurityStackConfig.

The client writes the server's configuration (JSON, which is YAML) with a
fresh random token per agent and one admin operator token, starts
``agentsec serve`` with ``-addr-file`` and ``-stop-on-stdin-eof``, and waits
for the address. Closing the child's stdin stops it: it settles what is open
and exits; stopping also sends SIGTERM, which it treats the same way.
The same class serves the sync and the async stacks (the async
one runs ``start`` and ``stop`` in a thread).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import IO, Any, Deque, Dict, List, Optional

from .config import SecurityStackConfig, _agent, _rule
from .errors import AgentsecBinaryNotFoundError, AgentsecStartupError

INSTALL_HINT = "go install github.com/agentsec/agentsec/cmd/agentsec@latest, or set AGENTSEC_BIN"

OPERATOR_ID = "local-operator"
KEY_NAME = "local"
_ADDR = re.compile(r"^[^\s]+:\d+$")


def find_binary(explicit: Optional[str] = None) -> str:
    """The agentsec binary: ``explicit``, else ``$AGENTSEC_BIN``, else
    ``agentsec`` on ``PATH``; raises AgentsecBinaryNotFoundError with how to
    install one."""
    for source, candidate in (("agentsec_bin", explicit), ("AGENTSEC_BIN", os.environ.get("AGENTSEC_BIN"))):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise AgentsecBinaryNotFoundError(
                f"{source} is {candidate!r}, which is not an executable file; install agentsec with: {INSTALL_HINT}"
            )
    found = shutil.which("agentsec")
    if found:
        return found
    raise AgentsecBinaryNotFoundError(
        f"the agentsec binary was not found (no AGENTSEC_BIN, no agentsec on PATH); install it with: {INSTALL_HINT}"
    )


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def build_config(cfg: SecurityStackConfig, data_dir: str, agent_tokens: Dict[str, str], operator_token: str) -> Dict[str, Any]:
    """The server configuration for ``cfg``, as a JSON-able dict."""
    tg = cfg.trust_gate
    trust: Dict[str, Any] = {}
    if tg.ladder is not None:
        trust["ladder"] = tg.ladder if isinstance(tg.ladder, str) else list(tg.ladder)
    if tg.default_level is not None:
        trust["default_level"] = tg.default_level
    rules: List[Dict[str, str]] = []
    if tg.tool_name is not None and tg.required_level is not None:
        rules.append({"tool": tg.tool_name, "level": tg.required_level})
    for r in tg.rules or []:
        rule = _rule(r)
        rules.append({"tool": rule.tool, "level": rule.level})
    if rules:
        trust["rules"] = rules
    agents: List[Dict[str, Any]] = []
    for a in tg.agents:
        ag = _agent(a)
        entry: Dict[str, Any] = {"id": ag.agent_id, "level": ag.level, "token_sha256": _sha256(agent_tokens[ag.agent_id])}
        if ag.scope:
            entry["scope"] = ag.scope
        agents.append(entry)
    if agents:
        trust["agents"] = agents
    b = cfg.budget
    budget: Dict[str, Any] = {"tokens": b.token_limit, "calls": b.call_limit}
    if b.call_token_limit is not None:
        budget["call_tokens"] = b.call_token_limit
    return {
        "namespace": cfg.audit_namespace,
        "listen": "127.0.0.1:0",
        "trust": trust,
        "budget": budget,
        "audit": {
            "path": os.path.join(data_dir, "audit.db"),
            "key_file": os.path.join(data_dir, KEY_NAME + ".key"),
        },
        "operators": [{"id": OPERATOR_ID, "role": "admin", "token_sha256": _sha256(operator_token)}],
    }


class _StderrTail:
    """Drains a pipe in a thread, keeping its last lines."""

    def __init__(self, pipe: IO[bytes], max_lines: int = 200) -> None:
        self._lines: Deque[str] = collections.deque(maxlen=max_lines)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), name="agentsec-stderr", daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        try:
            for line in iter(pipe.readline, b""):
                self._lines.append(line.decode("utf-8", "replace").rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def text(self, wait: float = 0.0) -> str:
        """The lines kept so far (after waiting up to ``wait`` s for the end)."""
        if wait:
            self._thread.join(wait)
        return "\n".join(self._lines)

    def join(self, timeout: float) -> None:
        """Waits for the pipe to close."""
        self._thread.join(timeout)


def _shutdown(proc: "subprocess.Popen[bytes]", timeout: float) -> None:
    """Closes the server's stdin and sends SIGTERM at once (it drains and
    exits cleanly on either; the signal also reaches it when a forked child
    still holds the stdin pipe open), waits up to ``timeout`` seconds, then
    kills it."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    if sys.platform != "win32":  # on Windows terminate() is a kill: rely on stdin EOF there
        try:
            proc.terminate()
        except OSError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop(proc: "subprocess.Popen[bytes]", temp_dir: Optional[str]) -> None:
    # The finalizer of a stack that was never closed: stop at once.
    _shutdown(proc, 5)
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)


#: The servers this process started and has not stopped, for the fork hook.
_live: "weakref.WeakSet[LocalServer]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child does not own its parent's servers: it closes its copy
    # of their stdin pipes (so they still see EOF when the parent closes
    # its own), and its close() or exit leaves them alone.
    for server in list(_live):
        server._disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalServer:
    """A running local ``agentsec serve``: its URL, the tokens the client
    holds, and the data directory."""

    def __init__(
        self,
        *,
        url: str,
        data_dir: str,
        agent_tokens: Dict[str, str],
        operator_token: str,
        default_tool: Optional[str],
        proc: "subprocess.Popen[bytes]",
        stderr: _StderrTail,
        temp: bool,
    ) -> None:
        self.url = url
        self.data_dir = data_dir
        self.agent_tokens = agent_tokens
        self.operator_token = operator_token
        self.default_tool = default_tool
        self._proc = proc
        self._stderr = stderr
        self._temp = temp
        self._lock = threading.Lock()
        self._stopped = False
        self._finalizer = weakref.finalize(self, _stop, proc, data_dir if temp else None)
        _live.add(self)

    def _disown(self) -> None:
        """In a forked child: closes the inherited stdin pipe end and makes
        stop() a no-op (the parent stops the server)."""
        self._lock = threading.Lock()
        self._stopped = True
        self._finalizer.detach()
        _live.discard(self)
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        except Exception:
            pass

    @classmethod
    def start(cls, cfg: SecurityStackConfig) -> "LocalServer":
        """Writes the configuration, starts the server and waits until it
        listens (at most ``cfg.startup_timeout`` seconds)."""
        binary = find_binary(cfg.agentsec_bin)
        temp = cfg.data_dir is None
        data_dir = tempfile.mkdtemp(prefix="agentsec-") if temp else os.path.abspath(cfg.data_dir or "")
        try:
            return cls._start(cfg, binary, data_dir, temp)
        except BaseException:
            if temp:
                shutil.rmtree(data_dir, ignore_errors=True)
            raise

    @classmethod
    def _start(cls, cfg: SecurityStackConfig, binary: str, data_dir: str, temp: bool) -> "LocalServer":
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        key = os.path.join(data_dir, KEY_NAME + ".key")
        if not os.path.exists(key):
            # A kept data_dir keeps its key pair, so that its log stays
            # verifiable: only a missing private key makes a new pair (a
            # missing local.pub alone must not replace the signing key).
            done = subprocess.run(
                [binary, "keygen", "-name", KEY_NAME, "-dir", data_dir],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=30,
            )
            if done.returncode != 0:
                err = done.stderr.decode("utf-8", "replace").strip()
                raise AgentsecStartupError(f"agentsec keygen failed (exit {done.returncode}): {err}", stderr=err)

        agent_ids: List[str] = []
        for a in cfg.trust_gate.agents:
            ag = _agent(a)
            if ag.agent_id not in agent_ids:
                agent_ids.append(ag.agent_id)
        agent_tokens = {a: secrets.token_hex(32) for a in agent_ids}
        operator_token = secrets.token_hex(32)

        conf = build_config(cfg, data_dir, agent_tokens, operator_token)
        conf_path = os.path.join(data_dir, "agentsec.yaml")
        fd = os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(conf, f, indent=2)
            f.write("\n")
        os.chmod(conf_path, 0o600)

        addr_path = os.path.join(data_dir, "addr")
        try:
            os.remove(addr_path)  # a previous run's
        except FileNotFoundError:
            pass

        kwargs: Dict[str, Any] = {}
        if sys.platform != "win32":
            # Its own session: a Ctrl-C at the terminal reaches the client,
            # which closes the stack, and not the server directly.
            kwargs["start_new_session"] = True
        proc = subprocess.Popen(
            [binary, "serve", "-config", conf_path, "-addr-file", addr_path, "-stop-on-stdin-eof"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **kwargs,
        )
        assert proc.stderr is not None
        tail = _StderrTail(proc.stderr)
        deadline = time.monotonic() + cfg.startup_timeout
        addr = ""
        try:
            while True:
                addr = _read_addr(addr_path)
                if addr:
                    break
                code = proc.poll()
                if code is not None:
                    err = tail.text(wait=2.0)
                    raise AgentsecStartupError(
                        f"agentsec serve exited (status {code}) before it listened:\n{err}", stderr=err
                    )
                if time.monotonic() > deadline:
                    err = tail.text()
                    raise AgentsecStartupError(
                        f"agentsec serve did not listen within {cfg.startup_timeout:g} s:\n{err}", stderr=err
                    )
                time.sleep(0.01)
        except BaseException:
            _stop(proc, None)
            raise
        return cls(
            url="http://" + addr,
            data_dir=data_dir,
            agent_tokens=agent_tokens,
            operator_token=operator_token,
            default_tool=cfg.trust_gate.tool_name,
            proc=proc,
            stderr=tail,
            temp=temp,
        )

    def stderr(self) -> str:
        """The last lines the server wrote to stderr."""
        return self._stderr.text()

    def stop(self, timeout: float = 10.0) -> None:
        """Closes the server's stdin and sends it SIGTERM (it settles what
        is open, and exits), waits up to ``timeout`` seconds, then kills it;
        removes a temporary data directory. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._finalizer.detach()
        _live.discard(self)
        _shutdown(self._proc, timeout)
        self._stderr.join(2.0)
        if self._temp:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _read_addr(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return ""
    return text if _ADDR.match(text) else ""
