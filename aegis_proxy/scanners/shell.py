"""Shell risk scanner: judges the commands a string runs once `aegis_proxy.shell` has normalised them.

It reads argv, redirections, pipelines and substitutions, never raw text, so quoting tricks and wrappers do not hide a
command. What it knows (system directories, persistence files, downloaders, security services ...) is kept in the
tables below; the rules only look things up in them.

Severity depends on where the string sits: in an exec position (`ScanTarget.exec_position`) findings keep their
severity; anywhere else (a file being written, an email body, a search query) the string is not being run by this
call, so findings are capped at LOW.

Categories:
- shell.destructive      deletes or overwrites the system: `rm -rf /`, mkfs/dd on a disk, fork bomb, shutdown ...
- shell.download_exec    runs what it downloads: `curl | sh`, `bash <(curl ...)`, `curl -o x && sh x` ...
- shell.decode_exec      runs what it decodes: `echo ... | base64 -d | sh` (HIGH: a decoded payload is not
                         necessarily remote, but it is hidden on purpose; the parser also decodes and reads it, so
                         the payload's own commands are judged too)
- shell.reverse_shell    gives a remote party a shell: `/dev/tcp` redirections, `nc -e`, `socat exec:` ...
- shell.persistence      survives the session: crontab, shell rc files, authorized_keys, systemd, launchd ...
- shell.defense_evasion  hides tracks or disables defences: history, logs, auditd/SELinux/firewall ...
- shell.privilege        setuid bits, sudoers, privileged groups (MEDIUM: held for a human)
- shell.obfuscation      a watched program reached through quoting tricks, `$IFS`, eval ... (MEDIUM), or nesting too
                         deep to read (HIGH)
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.safe_regex import compile_pattern
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget
from aegis_proxy.shell import (
    AWKS,
    CODE_OPTIONS,
    NESTING_MARKER,
    SHELLS,
    TRUNCATED_MARKER,
    ShellCommand,
    inline_code,
    is_decoder,
    reads_code_from_stdin,
    shell_options,
    substitution_refs,
)

CRITICAL, HIGH, MEDIUM, LOW = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- what the rules know -----------------------------------------------------------------------------------------

# Directories whose recursive deletion (or chmod/chown) wrecks the machine. A trailing `/*` counts as the directory.
TOP_SYSTEM_DIRS = _names(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /opt /proc /root /sbin /srv /sys /usr /var /snap "
    "/Users /System /Library /Applications /private"
)
SECOND_LEVEL_SYSTEM_DIRS = _names(
    "/usr/bin /usr/sbin /usr/lib /usr/lib64 /usr/libexec /usr/local /usr/share /usr/include /var/lib /var/spool "
    "/var/backups /var/mail /etc/ssh /etc/ssl /etc/pam.d /etc/systemd /etc/sudoers.d /etc/default /etc/security "
    "/boot/efi /boot/grub /private/etc /private/var /System/Library"
)
# Files and trees whose deletion or overwrite breaks the system even without -r.
VITAL_FILES = _names("/etc/passwd /etc/shadow /etc/group /etc/gshadow /etc/sudoers /etc/fstab /etc/hostname")
VITAL_PREFIXES = ("/boot/", "/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/lib/modules/", "/etc/pam.d/")
BLOCK_DEVICE_PREFIXES = tuple(
    _names(
        "/dev/sd /dev/hd /dev/vd /dev/xvd /dev/nvme /dev/mmcblk /dev/disk /dev/rdisk /dev/mapper/ /dev/md /dev/dm- "
        "/dev/nbd /dev/zd /dev/bcache /dev/root /dev/mem /dev/kmem /dev/port"
    )
)
LOG_DIRS = ("/var/log", "/var/adm", "/var/run/utmp", "/run/log/journal")
ROTATED_LOG_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".old", ".1")
# Files under a home directory (relative to it) that run at login, or let someone in.
PERSISTENCE_HOME_FILES: dict[str, str] = {
    **dict.fromkeys(
        _names(
            ".bashrc .bash_profile .bash_login .bash_logout .profile .zshrc .zprofile .zshenv .zlogin .zlogout .kshrc "
            ".cshrc .tcshrc .xprofile .xinitrc .xsession .pam_environment .config/fish/config.fish"
        ),
        "a shell startup file",
    ),
    ".ssh/authorized_keys": "SSH authorized_keys",
    ".ssh/authorized_keys2": "SSH authorized_keys",
    ".ssh/rc": "the SSH login script",
}
PERSISTENCE_HOME_PREFIXES: dict[str, str] = {
    ".config/autostart/": "desktop autostart",
    ".config/systemd/user/": "a systemd user unit",
    ".local/share/systemd/user/": "a systemd user unit",
    "Library/LaunchAgents/": "a launchd agent",
}
PERSISTENCE_FILES: dict[str, str] = {
    **dict.fromkeys(
        _names(
            "/etc/profile /etc/bash.bashrc /etc/bashrc /etc/zshrc /etc/zsh/zshrc /etc/zsh/zshenv /etc/zsh/zprofile "
            "/etc/environment"
        ),
        "a system-wide shell startup file",
    ),
    "/etc/rc.local": "/etc/rc.local (runs at boot)",
    "/etc/ld.so.preload": "/etc/ld.so.preload (loaded into every process)",
    "/etc/crontab": "the system crontab",
    "/etc/anacrontab": "the system crontab",
}
PERSISTENCE_PREFIXES: dict[str, str] = {
    "/etc/profile.d/": "a system-wide shell startup file",
    "/etc/cron.d/": "a cron job",
    "/etc/cron.hourly/": "a cron job",
    "/etc/cron.daily/": "a cron job",
    "/etc/cron.weekly/": "a cron job",
    "/etc/cron.monthly/": "a cron job",
    "/var/spool/cron/": "a cron job",
    "/etc/systemd/system/": "a systemd unit",
    "/lib/systemd/system/": "a systemd unit",
    "/usr/lib/systemd/system/": "a systemd unit",
    "/etc/init.d/": "an init script",
    "/etc/rc.d/": "an init script",
    "/etc/xdg/autostart/": "desktop autostart",
    "/etc/update-motd.d/": "a login script",
    "/Library/LaunchAgents/": "a launchd agent",
    "/Library/LaunchDaemons/": "a launchd daemon",
}
HISTORY_FILES = _names(
    ".bash_history .zsh_history .history .sh_history .ash_history .python_history .mysql_history .psql_history "
    ".node_repl_history .lesshst"
)
HISTORY_VARIABLES = _names("HISTFILE HISTSIZE HISTFILESIZE SAVEHIST HISTIGNORE")
SUDOERS = ("/etc/sudoers",)
ACCOUNT_FILES = _names("/etc/passwd /etc/shadow /etc/group /etc/gshadow /etc/master.passwd")
PRIVILEGED_GROUPS = _names("sudo wheel admin root docker lxd disk shadow")

DOWNLOADERS = _names("curl wget wget2 fetch aria2c axel lwp-download lwp-request http https xh xhs curlie tftp")
NETCATS = _names("nc ncat netcat nc.traditional nc.openbsd pwncat cryptcat sbd")
NETWORK_PIPES = NETCATS | _names("telnet socat")  # interactive byte pipes to a remote host
INTERPRETERS = SHELLS | frozenset(CODE_OPTIONS) | AWKS
# Substrings of inline code (matched lower-cased) that reveal what an interpreter one-liner does.
URL_FETCH_MARKERS = (
    "urlopen", "urllib.request", "requests.get", "http.client", "urlretrieve", "httpx.get", "open-uri", "net::http",
    "lwp::simple", "http::tiny", "file_get_contents(", "https.get(", "http.get(", "downloadstring", "downloadfile",
    "invoke-webrequest", "iwr ", "invoke-restmethod", "irm ", "net.webclient", "start-bitstransfer",
)  # fmt: skip
SOCKET_MARKERS = (
    "socket", "fsockopen", "io::socket", "net.socket", ".socket(", "net.connect", "createconnection",
    "require('net')", 'require("net")', "/inet/tcp/", "/inet/udp/", "/dev/tcp/", "net.sockets.tcpclient",
)  # fmt: skip
SHELL_MARKERS = (
    "/bin/sh", "/bin/bash", "sh -i", "bash -i", "cmd.exe", "pty.spawn", "dup2", "subprocess", "os.system", "popen",
    "proc_open", "exec(", "spawn(", "child_process", "os.execute", "system(", "exec ", "|&", "iex", "invoke-expression",
)  # fmt: skip
CODE_EXEC_MARKERS = (
    "exec(", "eval(", "execfile(", "compile(", "eval ", "instance_eval", "function(", "iex ", "iex(", "| iex",
    "invoke-expression",
)  # fmt: skip
# Inline code that decodes something (its output piped into a shell is decode-and-run).
CODE_DECODE_MARKERS = (
    "unquote", "b64decode", "a2b_base64", "fromhex", "unhexlify", "codecs.decode", "zlib.decompress",
    "gzip.decompress", "rot13", "atob(", "buffer.from(", "base64_decode(", "decode_base64", "frombase64string",
    "unpack(", "gzinflate(", "str_rot13(",
)  # fmt: skip
FORK_MARKERS = ("fork", "start-job")
LOOP_MARKERS = ("while", "for(;;)", "for (;;)", "loop", "until")
# Recursive-delete calls in inline code: `python3 -c 'import shutil; shutil.rmtree("/")'`.
CODE_DELETE = compile_pattern(
    r"(?:rmtree|rm_rf|rm_r|remove_tree|rmSync|rmdirSync|removedirs|Remove-Item)\s*\(?\s*[rbuf]?"
    r"(?:\"([^\"]*)\"|'([^']*)')"
)

SECURITY_SERVICES = _names(
    "auditd audit apparmor selinux firewalld ufw falco falcon-sensor falcond crowdstrike osqueryd osquery "
    "wazuh-agent ossec clamav-daemon clamd sysmon fail2ban snort suricata sentinelone sentinelagent "
    "elastic-agent auditbeat filebeat cbagentd cylancesvc tetragon tracee nftables iptables netfilter-persistent "
    "rsyslog syslog-ng systemd-journald aide tripwire mdatp amazon-ssm-agent"
)
POWER_COMMANDS = _names("shutdown reboot halt poweroff")
REMOTE_ACCESS_PORTS = _names("22 2222 3389 5900 5901 23")
TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/")
GIT_PERSISTENT_KEYS = _names(
    "core.hookspath core.sshcommand core.pager core.editor core.fsmonitor core.askpass credential.helper "
    "diff.external sequence.editor"
)
SYSTEMCTL_POWER_VERBS = _names("poweroff reboot halt kexec emergency rescue soft-reboot")
SYSTEMCTL_ENABLE_VERBS = _names("enable reenable link")
SYSTEMCTL_STOP_VERBS = _names("stop disable mask kill")
DISK_FORMATTERS = _names("mkfs mke2fs mkswap mkdosfs mkntfs wipefs sgdisk sfdisk blkdiscard")
PARTITION_EDITORS = _names("fdisk parted gdisk cfdisk")
# Tricks that no benign agent needs to write a program name, and tricks that only matter on a watched program
# (`\\rm` to skip an alias, `$a$b` built from variables, `{rm,-rf,x}`; decoded JSON `{"a":1,"b":2}` brace-expands
# too, into a program nobody has).
ALWAYS_SUSPICIOUS_TRICKS = _names("ansi_c ifs continuation empty_expansion glob case substitution")
WATCHED_TRICKS = _names("quotes variable brace")
FIND_FILTERS = _names(
    "-name -iname -path -ipath -wholename -iwholename -regex -iregex -newer -mtime -mmin -atime -amin -ctime -cmin "
    "-size -user -group -uid -gid -perm -empty -inum -samefile -links -lname -ilname"
)
DELETING_PROGRAMS = _names("rm shred unlink srm")
SETUID_DIGITS = frozenset("246")
_MAX_FINDINGS_PER_TARGET = 16


class _Context:
    """One target being judged: collects findings (capped outside exec positions) and tracks `cd`."""

    __slots__ = ("cap", "commands", "cwd", "home", "seen", "sink", "target")

    def __init__(self, target: ScanTarget, commands: Sequence[ShellCommand], sink: FindingSink, home: str) -> None:
        self.target = target
        self.commands = commands
        self.sink = sink
        self.home = home.rstrip("/") or "/"
        self.cwd: str | None = None  # unknown until a `cd` to an absolute place
        self.cap = None if target.exec_position else LOW
        self.seen: set[tuple[str, str]] = set()

    def add(self, category: str, severity: Severity, message: str, command: ShellCommand | None = None) -> None:
        if command is not None and command.wrappers:
            message = f"{message} (via {', '.join(command.wrappers)})"
        if len(message) > 200:
            message = message[:197] + "..."
        key = (category, message)
        if key in self.seen or len(self.seen) >= _MAX_FINDINGS_PER_TARGET:
            return
        self.seen.add(key)
        if self.cap is not None and severity > self.cap:
            severity = self.cap
        self.sink.add(self.target, category, severity, message)

    # paths ------------------------------------------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """Absolute, normalised form of a path argument; '' when it cannot be known (relative, substitution)."""
        if not path or "(#" in path:
            return ""
        if path[0] == "~":
            user, _, rest = path[1:].partition("/")
            base = self.home if not user else ("/root" if user == "root" else f"/home/{user}")
            path = f"{base}/{rest}"
        elif path.startswith(("$HOME", "${HOME}")):
            path = self.home + path[5 if path[1] == "H" else 7 :]
        elif path[0] != "/":
            if self.cwd is None or path[0] == "$":
                return ""
            path = f"{self.cwd}/{path}"
        path = posixpath.normpath(path)
        return "/" + path.lstrip("/") if path.startswith("//") else path

    def home_relative(self, path: str) -> str | None:
        """`/home/user/.bashrc` -> `.bashrc` for any home directory (and /root); None outside homes."""
        for home in (self.home, "/root"):
            if path.startswith(home + "/"):
                return path[len(home) + 1 :]
        for root in ("/home/", "/Users/"):
            if path.startswith(root):
                _, _, rest = path[len(root) :].partition("/")
                return rest or None
        return None


def _danger(path: str, ctx: _Context) -> str:
    """Why recursively wiping `path` (absolute) wrecks the machine, or ''."""
    if path == "/":
        return "the root directory"
    parts = path.split("/")
    if any(c in parts[1] for c in "*?["):
        return "every top-level directory"
    parent, base = posixpath.split(path)
    if base and all(c in "*?." for c in base) and "*" in base:
        inner = _danger(parent, ctx)
        return f"everything in {inner}" if inner else ""
    if path == ctx.home or (len(parts) == 3 and parts[1] in ("home", "Users") and parts[2]):
        return "a home directory"
    if path in TOP_SYSTEM_DIRS or path in SECOND_LEVEL_SYSTEM_DIRS:
        return f"system directory {path}"
    return ""


def _is_vital(path: str) -> bool:
    return path in VITAL_FILES or path.startswith(VITAL_PREFIXES)


def _is_block_device(path: str) -> bool:
    return path.startswith(BLOCK_DEVICE_PREFIXES)


def _is_log(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in LOG_DIRS)


def _is_rotated_log(path: str) -> bool:
    """`/var/log/nginx/access.log.3.gz`, `*.gz`, `syslog.1`: old rotated logs, which cleanup jobs delete."""
    name = posixpath.basename(path)
    return name.endswith(ROTATED_LOG_SUFFIXES) or name.rsplit(".", 1)[-1].isdigit()


def _is_history(path: str, ctx: _Context) -> bool:
    relative = ctx.home_relative(path)
    return relative is not None and relative in HISTORY_FILES


def _persistence_kind(path: str, ctx: _Context) -> str:
    relative = ctx.home_relative(path)
    if relative is not None:
        kind = PERSISTENCE_HOME_FILES.get(relative)
        if kind:
            return kind
        for prefix, kind in PERSISTENCE_HOME_PREFIXES.items():
            if (relative + "/").startswith(prefix):  # a file in the directory, or the directory as a copy target
                return kind
    kind = PERSISTENCE_FILES.get(path, "")
    if kind:
        return kind
    for prefix, kind in PERSISTENCE_PREFIXES.items():
        if (path + "/").startswith(prefix):
            return kind
    return ""


# --- argv helpers --------------------------------------------------------------------------------------------------


def _split_args(argv: tuple[str, ...]) -> tuple[set[str], set[str], list[str]]:
    """(short option letters, long option names, operands); everything after `--` is an operand."""
    short: set[str] = set()
    long: set[str] = set()
    operands: list[str] = []
    for index in range(1, len(argv)):
        arg = argv[index]
        if arg == "--":
            operands.extend(argv[index + 1 :])
            break
        if arg.startswith("--"):
            long.add(arg[2:].split("=", 1)[0])
        elif len(arg) > 1 and arg[0] == "-":
            short.update(arg[1:])
        else:
            operands.append(arg)
    return short, long, operands


def _show(command: ShellCommand) -> str:
    text = " ".join(command.argv)
    if "(#" in text:  # placeholders of substitutions read as "$(...)"
        for ref in substitution_refs(text):
            text = text.replace(f"(#{ref})", "(...)")
    return text if len(text) <= 80 else text[:77] + "..."


def _url_basename(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _is_downloader(command: ShellCommand) -> bool:
    if command.program in DOWNLOADERS:
        return True
    if command.program in INTERPRETERS:
        code = inline_code(command).lower()
        return bool(code) and any(marker in code for marker in URL_FETCH_MARKERS)
    return False


def _decodes(command: ShellCommand) -> bool:
    if is_decoder(command):
        return True
    if command.program in INTERPRETERS:
        code = inline_code(command).lower()
        return bool(code) and any(marker in code for marker in CODE_DECODE_MARKERS)
    return False


def _is_network_pipe(command: ShellCommand) -> bool:
    program = command.program
    if program in NETWORK_PIPES:
        return True
    if program == "openssl":
        return "s_client" in command.argv
    return any("/dev/tcp/" in target or "/dev/udp/" in target for _, target in command.redirects)


def _download_outputs(command: ShellCommand) -> list[str]:
    """Files a downloader writes (`curl -o F`, `curl -O URL`, `wget URL`, `wget -O F`, `> F`)."""
    argv = command.argv
    wget = argv[0] == "wget"
    outputs: list[str] = []
    remote_name = False
    for index in range(1, len(argv)):
        arg = argv[index]
        if arg[:1] != "-":
            continue
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if arg.startswith("--"):
            if arg == "--output-document" if wget else arg in ("--output", "--out"):
                outputs.append(following)
            elif arg.startswith("--output-document=" if wget else "--output="):
                outputs.append(arg.split("=", 1)[1])
            elif not wget and arg in ("--remote-name", "--remote-name-all"):
                remote_name = True
            continue
        # short clusters: `-o F`, `-sSLo F`, `-oF`, `-qO-`, `-sLO`
        letter = "O" if wget else "o"
        at = arg.find(letter, 1)
        if at > 0:
            outputs.append(arg[at + 1 :] or following)
        elif not wget and "O" in arg:
            remote_name = True
    if remote_name or (wget and not outputs):
        outputs.extend(_url_basename(a) for a in argv[1:] if "://" in a)
    for op, target in command.redirects:
        if op.lstrip("0123456789") in (">", ">>", ">|", "&>"):
            outputs.append(target)
    return [o for o in outputs if o and o != "-"]


def _cluster_has(arg: str, letter: str) -> bool:
    return len(arg) > 1 and arg[0] == "-" and arg[1] != "-" and letter in arg


def _executed_file(command: ShellCommand) -> str:
    """The file a command runs as a program or script (`./x`, `sh x`, `python3 x.py`, `. x`), or ''."""
    if "/" in command.program_path:
        return command.program_path
    program, argv = command.program, command.argv
    if program in SHELLS:
        flags, operands = shell_options(argv)
        return operands[0] if operands and "c" not in flags and operands[0] != "-" else ""
    if program in ("source", ".") and len(argv) > 1:
        return argv[1]
    if program in CODE_OPTIONS and not inline_code(command):
        for arg in argv[1:]:
            if not arg.startswith("-"):
                return arg
    return ""


def _code_words(command: ShellCommand) -> list[str]:
    """Words whose content the command runs as code: the program word, an interpreter's script or inline code, a
    here-string fed to an interpreter reading stdin."""
    words = [command.program_path or command.program]
    program = command.program
    if program in INTERPRETERS or program in ("source", ".", "eval"):
        words.extend(command.argv[1:3])
    if command.redirects and reads_code_from_stdin(command):
        words.extend(target for op, target in command.redirects if op in ("<<<", "<", "<<"))
    return words


# --- rules per program ---------------------------------------------------------------------------------------------

Rule = Callable[[ShellCommand, _Context], None]


def _rule_rm(command: ShellCommand, ctx: _Context) -> None:
    short, long, operands = _split_args(command.argv)
    recursive = "r" in short or "R" in short or "recursive" in long
    if "no-preserve-root" in long:
        ctx.add("shell.destructive", CRITICAL, f"rm --no-preserve-root: {_show(command)}", command)
    for operand in operands:
        path = ctx.resolve(operand)
        if not path:
            continue
        if _is_history(path, ctx) or (_is_log(path) and not _is_rotated_log(path)):
            ctx.add("shell.defense_evasion", HIGH, f"deletes logs or shell history: {operand}", command)
            continue
        reason = _danger(path, ctx) if recursive else ""
        if reason:
            ctx.add("shell.destructive", CRITICAL, f"recursive delete of {operand} ({reason})", command)
        elif _is_vital(path):
            ctx.add("shell.destructive", HIGH, f"deletes system file {operand}", command)


def _rule_mv(command: ShellCommand, ctx: _Context) -> None:
    _, _, operands = _split_args(command.argv)
    for operand in operands[:-1]:
        path = ctx.resolve(operand)
        reason = _danger(path, ctx) if path else ""
        if reason:
            ctx.add("shell.destructive", CRITICAL, f"moves {operand} away ({reason})", command)
        elif path and (_is_log(path) or _is_history(path, ctx)):
            ctx.add("shell.defense_evasion", HIGH, f"moves logs or shell history away: {operand}", command)


def _rule_shred(command: ShellCommand, ctx: _Context) -> None:
    for operand in _split_args(command.argv)[2]:
        path = ctx.resolve(operand)
        if not path:
            continue
        if _is_block_device(path):
            ctx.add("shell.destructive", CRITICAL, f"shreds block device {operand}", command)
        elif _is_log(path) or _is_history(path, ctx):
            ctx.add("shell.defense_evasion", HIGH, f"shreds logs or shell history: {operand}", command)
        elif _is_vital(path) or _danger(path, ctx):
            ctx.add("shell.destructive", HIGH, f"shreds system file {operand}", command)


def _rule_disk(command: ShellCommand, ctx: _Context) -> None:
    """mkfs*, wipefs, sgdisk ...: on a block device they erase it; on an image file they are harmless."""
    program = command.program
    if program in PARTITION_EDITORS and any(a in ("-l", "--list", "print", "-L") for a in command.argv[1:]):
        return
    devices = [op for op in _split_args(command.argv)[2] if _is_block_device(ctx.resolve(op) or op)]
    if devices:
        severity = HIGH if program in PARTITION_EDITORS else CRITICAL
        ctx.add("shell.destructive", severity, f"{program} on block device {devices[0]}", command)


def _rule_chmod(command: ShellCommand, ctx: _Context) -> None:
    recursive = False
    mode = ""
    targets: list[str] = []
    for arg in command.argv[1:]:
        if arg in ("-R", "--recursive") or (arg.startswith("-") and not _is_mode(arg) and "R" in arg):
            recursive = True
        elif not mode and _is_mode(arg):
            mode = arg
        elif not arg.startswith("-"):
            targets.append(arg)
    if _is_setuid(mode):
        ctx.add("shell.privilege", MEDIUM, f"sets the setuid/setgid bit: {_show(command)}", command)
    loose = _is_world_writable(mode) or mode in ("000", "0000", "a-rwx")
    for target in targets:
        path = ctx.resolve(target)
        if not path:
            continue
        reason = _danger(path, ctx)
        if recursive and reason and (path == "/" or reason.startswith("every")):
            ctx.add("shell.destructive", CRITICAL, f"recursive chmod {mode} of {target} ({reason})", command)
        elif recursive and reason and ("home" not in reason or loose):
            ctx.add("shell.destructive", HIGH, f"recursive chmod {mode} of {target} ({reason})", command)
        elif loose and (_is_vital(path) or path.startswith(SUDOERS) or path in ACCOUNT_FILES or path == "/"):
            ctx.add("shell.privilege", HIGH, f"chmod {mode} opens up {target}", command)


def _is_mode(arg: str) -> bool:
    if arg.isdigit():
        return len(arg) <= 4
    return bool(arg) and any(op in arg for op in "+-=") and all(c in "ugoa+-=rwxXst0123456789," for c in arg)


def _is_setuid(mode: str) -> bool:
    if mode.isdigit():
        return len(mode) == 4 and mode[0] in SETUID_DIGITS
    for clause in mode.split(","):
        for op in "+=":
            if op in clause and "s" in clause.split(op, 1)[1]:
                return True
    return False


def _is_world_writable(mode: str) -> bool:
    if mode.isdigit():
        return mode[-1] in "2367"
    return any(c in mode for c in ("o+w", "a+w", "o=rw", "a=rw", "o+rw", "a+rw", "o=rwx", "a=rwx", "+rwx"))


def _rule_chown(command: ShellCommand, ctx: _Context) -> None:
    short, long, operands = _split_args(command.argv)
    if not ("R" in short or "recursive" in long) or len(operands) < 2:
        return
    for target in operands[1:]:
        path = ctx.resolve(target)
        if not path:
            continue
        if path == "/" or _danger(path, ctx).startswith("every"):
            ctx.add(
                "shell.destructive", CRITICAL, f"recursive {command.program} of {target} (the whole system)", command
            )
        elif path in TOP_SYSTEM_DIRS and path not in ("/home", "/opt", "/srv"):
            ctx.add("shell.destructive", HIGH, f"recursive {command.program} of system directory {target}", command)


def _rule_find(command: ShellCommand, ctx: _Context) -> None:
    argv = command.argv
    deletes = "-delete" in argv
    for index, arg in enumerate(argv):
        if arg in ("-exec", "-execdir", "-ok", "-okdir") and index + 1 < len(argv):
            deletes = deletes or argv[index + 1].rsplit("/", 1)[-1] in DELETING_PROGRAMS
    if not deletes:
        return
    selective = any(arg in FIND_FILTERS for arg in argv)
    for arg in argv[1:]:
        if arg.startswith(("-", "(", "!")):
            break
        path = ctx.resolve(arg)
        if not path:
            continue
        if _is_log(path) or _is_history(path, ctx):
            if not selective:  # `find /var/log -name '*.gz' -mtime +30 -delete` is log rotation
                ctx.add("shell.defense_evasion", HIGH, f"find deletes logs under {arg}", command)
            continue
        reason = _danger(path, ctx)
        if reason:
            severity = MEDIUM if selective else CRITICAL
            ctx.add("shell.destructive", severity, f"find deletes files under {arg} ({reason})", command)


def _rule_kill(command: ShellCommand, ctx: _Context) -> None:
    args = list(command.argv[1:])
    if args and args[0] in ("-s", "-n", "--signal"):
        if args[1:2] == ["0"]:
            return  # signal 0 only checks that the process exists
        args = args[2:]
    elif args and args[0].startswith("-") and args[0] != "--":
        if args[0] == "-0":
            return
        args = args[1:]
    if args and args[0] == "--":
        args = args[1:]
    if "-1" in args:
        ctx.add("shell.destructive", HIGH, f"kill -1 signals every process: {_show(command)}", command)
    elif "1" in args:
        ctx.add("shell.destructive", HIGH, f"kills init (pid 1): {_show(command)}", command)


def _rule_power(command: ShellCommand, ctx: _Context) -> None:
    args = command.argv[1:]
    if command.program == "shutdown" and ("-c" in args or "--help" in args):
        return
    if "--help" in args or "--version" in args:
        return
    ctx.add("shell.destructive", HIGH, f"{command.program} stops the machine", command)


def _rule_init(command: ShellCommand, ctx: _Context) -> None:
    if any(a in ("0", "6") for a in command.argv[1:]):
        ctx.add("shell.destructive", HIGH, f"{_show(command)} stops the machine", command)


def _rule_systemctl(command: ShellCommand, ctx: _Context) -> None:
    _, _, operands = _split_args(command.argv)
    if not operands:
        return
    verb, units = operands[0], [u.rsplit(".", 1)[0] if u.endswith((".service", ".socket")) else u for u in operands[1:]]
    if verb in SYSTEMCTL_POWER_VERBS:
        ctx.add("shell.destructive", HIGH, f"systemctl {verb} stops the machine", command)
    elif verb in SYSTEMCTL_ENABLE_VERBS and units:
        ctx.add("shell.persistence", HIGH, f"systemctl {verb} starts {' '.join(units)} at every boot", command)
    elif verb in SYSTEMCTL_STOP_VERBS:
        stopped = [u for u in units if u in SECURITY_SERVICES]
        if stopped:
            ctx.add("shell.defense_evasion", HIGH, f"systemctl {verb} security service {stopped[0]}", command)


def _rule_service(command: ShellCommand, ctx: _Context) -> None:
    args = command.argv[1:]
    if len(args) >= 2 and args[0] in SECURITY_SERVICES and args[1] in ("stop", "disable"):
        ctx.add("shell.defense_evasion", HIGH, f"stops security service {args[0]}", command)


def _rule_security_service(command: ShellCommand, ctx: _Context) -> None:
    """`/etc/init.d/auditd stop`."""
    if "stop" in command.argv[1:]:
        ctx.add("shell.defense_evasion", HIGH, f"stops security service {command.program}", command)


def _rule_pkill(command: ShellCommand, ctx: _Context) -> None:
    stopped = [op for op in _split_args(command.argv)[2] if op in SECURITY_SERVICES]
    if stopped:
        ctx.add("shell.defense_evasion", HIGH, f"{command.program} kills security service {stopped[0]}", command)


def _rule_crontab(command: ShellCommand, ctx: _Context) -> None:
    args = command.argv[1:]
    short, _, _ = _split_args(command.argv)
    operands = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-u")]
    if "r" in short:
        ctx.add("shell.destructive", HIGH, "crontab -r removes every cron job", command)
    elif "e" in short:
        ctx.add("shell.persistence", HIGH, "crontab -e edits scheduled jobs", command)
    elif "-" in args or operands or not (short & set("lrei")):
        ctx.add("shell.persistence", HIGH, f"installs a crontab: {_show(command)}", command)


def _rule_firewall(command: ShellCommand, ctx: _Context) -> None:
    args = command.argv[1:]
    program = command.program
    flushed = (program in ("iptables", "ip6tables") and ("-F" in args or "--flush" in args)) or (
        program == "nft" and "flush" in args and "ruleset" in args
    )
    disabled = program == "ufw" and ("disable" in args or "reset" in args)
    if flushed or disabled:
        ctx.add("shell.defense_evasion", HIGH, f"turns the firewall off: {_show(command)}", command)


def _rule_selinux(command: ShellCommand, ctx: _Context) -> None:
    program, args = command.program, [a.lower() for a in command.argv[1:]]
    off = (
        (program == "setenforce" and any(a in ("0", "permissive") for a in args))
        or (program == "auditctl" and ("-D" in command.argv or ("-e" in args and "0" in args)))
        or program == "aa-teardown"
        or (program in ("aa-disable", "aa-complain") and bool(args))
        or (program == "apparmor_parser" and ("-R" in command.argv or "--remove" in args))
        or (program == "spctl" and any(a in ("--master-disable", "--global-disable") for a in args))
        or (program == "csrutil" and "disable" in args)
    )
    if off:
        ctx.add("shell.defense_evasion", HIGH, f"disables a security control: {_show(command)}", command)


def _rule_history(command: ShellCommand, ctx: _Context) -> None:
    program, args = command.program, command.argv[1:]
    hides = (
        (program == "history" and any(_cluster_has(a, "c") for a in args))
        or (program == "unset" and any(a in HISTORY_VARIABLES for a in args))
        or (program == "set" and "+o" in args and "history" in args)
        or (program == "shopt" and "history" in args and any(_cluster_has(a, "u") for a in args))
    )
    if hides:
        ctx.add("shell.defense_evasion", HIGH, f"disables shell history: {_show(command)}", command)
    if program in ("export", "declare", "typeset", "local", "readonly"):
        _check_assignments(args, command, ctx)


def _rule_journal(command: ShellCommand, ctx: _Context) -> None:
    args = command.argv[1:]
    program = command.program
    if (
        (program == "journalctl" and any(a.startswith("--vacuum") for a in args))
        or (program == "dmesg" and any(a in ("-c", "-C", "--clear", "--read-clear") for a in args))
        or (program == "wevtutil" and any(a.lower() in ("cl", "clear-log") for a in args))
    ):
        ctx.add("shell.defense_evasion", HIGH, f"clears system logs: {_show(command)}", command)


def _rule_accounts(command: ShellCommand, ctx: _Context) -> None:
    args = command.argv[1:]
    groups: set[str] = set()
    for index, arg in enumerate(args):
        if arg in ("-G", "-aG", "-g", "--groups", "--append", "-a") and index + 1 < len(args):
            groups.update(args[index + 1].split(","))
    uid_zero = any(args[i] in ("-u", "--uid") and args[i + 1] == "0" for i in range(len(args) - 1))
    if groups & PRIVILEGED_GROUPS or uid_zero:
        ctx.add("shell.privilege", MEDIUM, f"grants administrator rights: {_show(command)}", command)


def _rule_setcap(command: ShellCommand, ctx: _Context) -> None:
    caps = " ".join(command.argv[1:]).lower()
    if any(c in caps for c in ("cap_setuid", "cap_sys_admin", "cap_dac_override", "cap_sys_ptrace", "=ep")):
        ctx.add("shell.privilege", MEDIUM, f"grants file capabilities: {_show(command)}", command)


def _rule_launchctl(command: ShellCommand, ctx: _Context) -> None:
    if any(a in ("load", "bootstrap", "submit", "enable") for a in command.argv[1:2]):
        ctx.add("shell.persistence", HIGH, f"registers a launchd job: {_show(command)}", command)


def _rule_netcat(command: ShellCommand, ctx: _Context) -> None:
    for arg in command.argv[1:]:
        if arg in ("--exec", "--sh-exec", "--lua-exec") or arg.startswith(("--exec=", "--sh-exec=")):
            break
        if len(arg) > 1 and arg[0] == "-" and arg[1] != "-" and ("e" in arg or "c" in arg):
            break
    else:
        return
    ctx.add(
        "shell.reverse_shell", CRITICAL, f"{command.program} hands a shell to the network: {_show(command)}", command
    )


def _rule_socat(command: ShellCommand, ctx: _Context) -> None:
    if any(a.lower().startswith(("exec:", "system:")) for a in command.argv[1:]):
        ctx.add("shell.reverse_shell", CRITICAL, f"socat connects a shell to the network: {_show(command)}", command)


def _rule_ztcp(command: ShellCommand, ctx: _Context) -> None:
    if command.program == "ztcp" or "zsh/net/tcp" in command.argv:
        ctx.add("shell.reverse_shell", HIGH, f"zsh raw TCP connection: {_show(command)}", command)


def _rule_ssh(command: ShellCommand, ctx: _Context) -> None:
    """`ssh -R 9000:localhost:22 attacker`: opens this machine's ports to a remote host (a reverse tunnel)."""
    argv = command.argv
    for index, arg in enumerate(argv[1:], 1):
        if arg.startswith("-") and not arg.startswith("--") and "R" in arg:
            spec = arg[arg.index("R") + 1 :] or (argv[index + 1] if index + 1 < len(argv) else "")
            port = spec.rsplit(":", 1)[-1]
            severity = HIGH if port in REMOTE_ACCESS_PORTS else MEDIUM
            ctx.add("shell.reverse_shell", severity, f"ssh reverse tunnel to this machine: -R {spec}", command)
            return


def _rule_git(command: ShellCommand, ctx: _Context) -> None:
    """`git config --global core.hooksPath /tmp/h`, `core.fsmonitor 'curl x|sh'`: later git commands run them."""
    argv = command.argv
    if "config" not in argv:
        return
    scope_wide = "--global" in argv or "--system" in argv
    start = argv.index("config") + 1
    for index in range(start, len(argv) - 1):
        key, value = argv[index].lower(), argv[index + 1]
        if key == "core.hookspath":
            temporary = value.startswith(TEMP_DIRS)
            if scope_wide or temporary:
                severity = HIGH if temporary else MEDIUM
                ctx.add("shell.persistence", severity, f"git hooks taken from {value} for later git commands", command)
            return
        if key in GIT_PERSISTENT_KEYS or key.startswith("alias."):
            if any(c in value for c in "|;&$`") or value.startswith("!") or value.startswith(TEMP_DIRS):
                severity = HIGH if scope_wide else MEDIUM
                ctx.add("shell.persistence", severity, f"git config {argv[index]} runs a command later", command)
            return


def _rule_interpreter(command: ShellCommand, ctx: _Context) -> None:
    """Inline code of python/perl/ruby/node/php/awk/pwsh one-liners (the shell commands it embeds are already
    separate commands; this judges what the code itself does)."""
    raw_code = inline_code(command)
    if not raw_code:
        return
    code = raw_code.lower()
    program = command.program
    if any(m in code for m in SOCKET_MARKERS) and any(m in code for m in SHELL_MARKERS):
        ctx.add("shell.reverse_shell", CRITICAL, f"{program} code opens a socket and runs a shell", command)
    elif any(m in code for m in URL_FETCH_MARKERS) and any(m in code for m in CODE_EXEC_MARKERS):
        ctx.add("shell.download_exec", CRITICAL, f"{program} code runs what it downloads", command)
    if any(m in code for m in FORK_MARKERS) and any(m in code for m in LOOP_MARKERS):
        ctx.add("shell.destructive", CRITICAL, f"{program} code forks in a loop (fork bomb)", command)
    for match in CODE_DELETE.finditer(raw_code[:MAX_CODE_CHARS]):
        literal = match.group(1) if match.group(1) is not None else match.group(2) or ""
        path = ctx.resolve(literal)
        reason = _danger(path, ctx) if path else ""
        if reason:
            ctx.add("shell.destructive", CRITICAL, f"{program} code deletes {literal} ({reason})", command)
            break


MAX_CODE_CHARS = 16_384


COMMAND_RULES: dict[str, Rule] = {
    "rm": _rule_rm,
    "unlink": _rule_rm,
    "srm": _rule_rm,
    "mv": _rule_mv,
    "shred": _rule_shred,
    **dict.fromkeys(DISK_FORMATTERS | PARTITION_EDITORS, _rule_disk),
    "chmod": _rule_chmod,
    "chown": _rule_chown,
    "chgrp": _rule_chown,
    "chattr": _rule_chown,
    "find": _rule_find,
    "kill": _rule_kill,
    **dict.fromkeys(POWER_COMMANDS, _rule_power),
    "init": _rule_init,
    "telinit": _rule_init,
    "systemctl": _rule_systemctl,
    "service": _rule_service,
    **dict.fromkeys(SECURITY_SERVICES, _rule_security_service),
    "pkill": _rule_pkill,
    "killall": _rule_pkill,
    "crontab": _rule_crontab,
    "iptables": _rule_firewall,
    "ip6tables": _rule_firewall,
    "nft": _rule_firewall,
    "ufw": _rule_firewall,
    **dict.fromkeys(
        ("setenforce", "auditctl", "aa-teardown", "aa-disable", "aa-complain", "apparmor_parser", "spctl", "csrutil"),
        _rule_selinux,
    ),
    **dict.fromkeys(
        ("history", "unset", "set", "shopt", "export", "declare", "typeset", "local", "readonly"), _rule_history
    ),
    "journalctl": _rule_journal,
    "dmesg": _rule_journal,
    "wevtutil": _rule_journal,
    "usermod": _rule_accounts,
    "useradd": _rule_accounts,
    "adduser": _rule_accounts,
    "gpasswd": _rule_accounts,
    "setcap": _rule_setcap,
    "launchctl": _rule_launchctl,
    **dict.fromkeys(NETCATS, _rule_netcat),
    "socat": _rule_socat,
    "ztcp": _rule_ztcp,
    "ssh": _rule_ssh,
    "git": _rule_git,
    "zmodload": _rule_ztcp,
    **dict.fromkeys(INTERPRETERS - SHELLS, _rule_interpreter),
}
# Programs whose obfuscated spelling is itself a finding in an exec position.
WATCHED_PROGRAMS = frozenset(COMMAND_RULES) | DOWNLOADERS | NETWORK_PIPES | INTERPRETERS | _names("eval base64 dd")


# --- rules on every command ------------------------------------------------------------------------------------------


def _check_assignments(assignments: Iterable[str], command: ShellCommand, ctx: _Context) -> None:
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        if name not in HISTORY_VARIABLES:
            continue
        if name == "HISTFILE" or (name == "HISTIGNORE" and "*" in value) or value.strip() in ("", "0"):
            ctx.add("shell.defense_evasion", HIGH, f"disables shell history: {assignment}", command)


def _write_targets(command: ShellCommand) -> list[tuple[str, str]]:
    """(path, mode) for every file the command writes; mode: truncate, append, copy, link, edit."""
    targets: list[tuple[str, str]] = []
    for op, target in command.redirects:
        bare = op.lstrip("0123456789")
        if bare in (">", ">|", "&>") or (bare == ">&" and not target.isdigit() and target != "-"):
            targets.append((target, "truncate"))
        elif bare in (">>", "&>>"):
            targets.append((target, "append"))
    program, argv = command.program, command.argv
    if len(argv) < 2:
        return targets
    if program == "tee":
        append = any(a in ("-a", "--append") for a in argv[1:])
        targets.extend((op, "append" if append else "truncate") for op in _split_args(argv)[2])
    elif program in ("cp", "mv", "install", "rsync", "ln"):
        operands = _split_args(argv)[2]
        if len(operands) >= 2:
            targets.append((operands[-1], "link" if program == "ln" else "copy"))
    elif program == "dd":
        targets.extend((a[3:], "truncate") for a in argv[1:] if a.startswith("of="))
    elif program == "truncate":
        size_zero = False
        operands = []
        skip = False
        for index, arg in enumerate(argv[1:], 1):
            if skip:
                skip = False
                continue
            if arg in ("-s", "--size"):
                size_zero = argv[index + 1][:1] in ("0", "-", "<") if index + 1 < len(argv) else False
                skip = True
            elif arg.startswith(("-s", "--size=")):
                size_zero = arg.split("=", 1)[-1].removeprefix("-s")[:1] in ("0", "-", "<")
            elif not arg.startswith("-"):
                operands.append(arg)
        if size_zero:
            targets.extend((op, "truncate") for op in operands)
    elif program in ("sed", "perl") and any(
        a == "-i" or a.startswith(("-i", "--in-place")) or (program == "perl" and _cluster_has(a, "i"))
        for a in argv[1:]
    ):
        operands = _split_args(argv)[2]
        explicit_script = any(a in ("-e", "--expression", "-f") for a in argv[1:])
        targets.extend((op, "edit") for op in (operands if explicit_script else operands[1:]))
    elif program in DOWNLOADERS:
        targets.extend((out, "copy") for out in _download_outputs(command))
    return targets


def _judge_write(raw_path: str, mode: str, command: ShellCommand, ctx: _Context) -> None:
    path = ctx.resolve(raw_path)
    if not path:
        return
    if _is_block_device(path):
        ctx.add("shell.destructive", CRITICAL, f"writes to block device {raw_path}", command)
        return
    if path == "/proc/sysrq-trigger":
        ctx.add("shell.destructive", HIGH, "writes to /proc/sysrq-trigger (crash or reboot)", command)
        return
    kind = _persistence_kind(path, ctx)
    if kind:
        ctx.add("shell.persistence", HIGH, f"writes {kind}: {raw_path}", command)
    elif path.startswith(SUDOERS):
        ctx.add("shell.privilege", MEDIUM, f"writes sudoers: {raw_path}", command)
    elif path in ACCOUNT_FILES:
        ctx.add("shell.privilege", HIGH, f"writes the account database: {raw_path}", command)
    elif mode in ("truncate", "copy", "link") and (_is_log(path) or _is_history(path, ctx)):
        ctx.add("shell.defense_evasion", HIGH, f"overwrites logs or shell history: {raw_path}", command)
    elif mode in ("truncate", "copy") and _is_vital(path):
        ctx.add("shell.destructive", HIGH, f"overwrites system file {raw_path}", command)


def _check_command(command: ShellCommand, ctx: _Context) -> None:
    program = command.program
    rule = COMMAND_RULES.get(program)
    if rule is not None:
        rule(command, ctx)
    elif program.startswith("mkfs."):
        _rule_disk(command, ctx)
    if command.assignments:
        _check_assignments(command.assignments, command, ctx)
    if command.redirects:
        for _, target in command.redirects:
            if "/dev/tcp/" in target or "/dev/udp/" in target:
                ctx.add("shell.reverse_shell", CRITICAL, f"raw network redirection to {target}", command)
    for path, mode in _write_targets(command):
        _judge_write(path, mode, command, ctx)
    if command.obfuscation:
        _check_obfuscation(command, ctx)
    elif command.wrappers and "eval" in command.wrappers and program in WATCHED_PROGRAMS:
        ctx.add("shell.obfuscation", MEDIUM, f"{program} run through eval", command)


def _check_obfuscation(command: ShellCommand, ctx: _Context) -> None:
    tricks = set(command.obfuscation)
    if TRUNCATED_MARKER in tricks:
        ctx.add("shell.obfuscation", MEDIUM, "script too long or too nested to read completely")
    if NESTING_MARKER in tricks:
        ctx.add("shell.obfuscation", HIGH, f"wrappers nested too deep to read: {_show(command)}", command)
    shown = tricks & ALWAYS_SUSPICIOUS_TRICKS
    if command.program in WATCHED_PROGRAMS:
        shown |= tricks & WATCHED_TRICKS
    if shown:
        ctx.add("shell.obfuscation", MEDIUM, f"{command.program} written with {', '.join(sorted(shown))}", command)


# --- rules on the whole script ---------------------------------------------------------------------------------------


def _producer_kind(commands: Iterable[ShellCommand]) -> str:
    kinds = set()
    for command in commands:
        if _is_downloader(command):
            return "download"
        if _is_network_pipe(command):
            kinds.add("network")
        elif _decodes(command):
            kinds.add("decode")
    return "network" if "network" in kinds else "decode" if kinds else ""


_PRODUCER_FINDINGS = {
    "download": ("shell.download_exec", CRITICAL, "runs what {source} downloads"),
    "network": ("shell.reverse_shell", CRITICAL, "runs what {source} receives from the network"),
    "decode": ("shell.decode_exec", HIGH, "runs what {source} decodes"),
}


def _check_pipelines(ctx: _Context) -> None:
    pipelines: dict[int, list[ShellCommand]] = {}
    for command in ctx.commands:
        if command.argv:
            pipelines.setdefault(command.pipeline, []).append(command)
    for stages in pipelines.values():
        if len(stages) < 2:
            continue
        for sink in stages:
            if sink.stage == 0 or not reads_code_from_stdin(sink):
                continue
            sources = [c for c in stages if c.stage < sink.stage]
            kind = _producer_kind(sources)
            if kind:
                category, severity, text = _PRODUCER_FINDINGS[kind]
                source = next(c.program for c in sources if _producer_kind([c]) == kind)
                ctx.add(category, severity, f"{text.format(source=source)}: piped into {sink.program}", sink)
        if any(_is_network_pipe(c) for c in stages) and any(c.program in SHELLS for c in stages):
            ctx.add("shell.reverse_shell", CRITICAL, "pipeline connects a shell to a network pipe")


def _check_substitution_exec(ctx: _Context) -> None:
    """`sh -c "$(curl ...)"`, `eval "$(curl ...)"`, `bash <(curl ...)`, `python3 -c "$(wget -O- ...)"`."""
    by_substitution: dict[int, list[ShellCommand]] = {}
    for command in ctx.commands:
        if command.substitution_id:
            by_substitution.setdefault(command.substitution_id, []).append(command)
    if not by_substitution:
        return
    for command in ctx.commands:
        for word in _code_words(command):
            for ref in substitution_refs(word):
                kind = _producer_kind(by_substitution.get(ref, ()))
                if kind:
                    category, severity, text = _PRODUCER_FINDINGS[kind]
                    source = by_substitution[ref][0].program
                    ctx.add(category, severity, f"{text.format(source=source)}: {_show(command)}", command)


def _check_download_then_run(ctx: _Context) -> None:
    """`curl -o x.sh URL && sh x.sh`, `wget URL/x && chmod +x x && ./x`."""
    if not any(_executed_file(command) for command in ctx.commands):
        return
    downloaded: set[str] = set()
    for command in ctx.commands:
        if downloaded:
            executed = _executed_file(command)
            if executed and posixpath.basename(executed) in downloaded:
                ctx.add("shell.download_exec", CRITICAL, f"runs the downloaded file {executed}", command)
        if command.program in DOWNLOADERS:
            downloaded.update(posixpath.basename(out) for out in _download_outputs(command))


def _check_fork_bomb(ctx: _Context) -> None:
    self_calls: dict[str, int] = {}
    for command in ctx.commands:
        if command.function and command.program == command.function:
            self_calls[command.function] = self_calls.get(command.function, 0) + 1
    for name, count in self_calls.items():
        if count >= 2:
            ctx.add("shell.destructive", CRITICAL, f"fork bomb: function {name} starts itself {count} times")


def _track_cwd(command: ShellCommand, ctx: _Context) -> None:
    if command.program not in ("cd", "pushd") or command.substitution:
        return
    args = [a for a in command.argv[1:] if not a.startswith("-")]
    if not args or args[0] in ("~", "$HOME", "${HOME}"):
        ctx.cwd = ctx.home
        return
    resolved = ctx.resolve(args[0])
    ctx.cwd = resolved or None


class ShellScanner(Scanner):
    """Finds destructive, download-and-run, reverse-shell, persistence and evasion commands in shell strings."""

    name: ClassVar[str] = "shell"
    categories: ClassVar[frozenset[str]] = frozenset(
        {
            "shell.destructive",
            "shell.download_exec",
            "shell.decode_exec",
            "shell.reverse_shell",
            "shell.persistence",
            "shell.defense_evasion",
            "shell.privilege",
            "shell.obfuscation",
        }
    )

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        sink = FindingSink(self.name)
        for target in targets:
            if target.commands:  # the firewall parsed every exec-position string, and others that look like shell
                self._scan_commands(target, target.commands, sink, settings)
        return sink.findings

    def _scan_commands(
        self, target: ScanTarget, commands: Sequence[ShellCommand], sink: FindingSink, settings: ScanSettings
    ) -> None:
        ctx = _Context(target, commands, sink, settings.home)
        for command in commands:
            _track_cwd(command, ctx)
            _check_command(command, ctx)
        if len(commands) > 1:
            _check_pipelines(ctx)
            _check_substitution_exec(ctx)
            _check_download_then_run(ctx)
            _check_fork_bomb(ctx)
