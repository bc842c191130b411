"""The seccomp filter of every sandboxed program, as classic BPF for `bwrap --seccomp FD`.

Built here, in Python, from a fixed table: no library to install (libseccomp's bindings are
not on PyPI in a maintained form), no compiler, nothing generated at build time. The
program is a straight line of comparisons, so every jump is 0 or a few instructions:

1. the architecture in `seccomp_data` must be the one the table is for, else the process
   is killed (the i386 `int 0x80` ABI on x86_64, AArch32 on arm64: other numbers, other
   meanings);
2. on x86_64 the x32 ABI (numbers with bit 30 set) is denied;
3. denied with EPERM: keyrings (keyctl, add_key, request_key), ptrace and cross-process
   memory (process_vm_readv/writev, pidfd_getfd), mounts (old and new API), pivot_root,
   chroot, swap, reboot, kexec, kernel modules, bpf, perf_event_open, userfaultfd,
   open_by_handle_at, io_uring (its operations would bypass this filter), setns, clock
   and accounting calls, and on x86_64 iopl/ioperm/uselib/_sysctl/nfsservctl;
4. unshare and clone with any CLONE_NEW* flag: EPERM (threads, fork, vfork still work);
   clone3 (whose flags are behind a pointer): ENOSYS, so libc falls back to clone;
5. ioctl TIOCSTI / TIOCLINUX (typing into a terminal): EPERM;
6. everything else is allowed.

`filter_bytes()` is what bwrap reads (an array of `struct sock_filter`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# <linux/audit.h>, <linux/seccomp.h>, <linux/bpf_common.h>
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
# offsets in struct seccomp_data {int nr; u32 arch; u64 instruction_pointer; u64 args[6];}
# (both architectures are little-endian: the low word of args[i] is at 16 + 8 * i)
OFFSET_NR, OFFSET_ARCH = 0, 4
X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET, and NEWTIME
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | \
    0x20000000 | 0x40000000 | 0x00000080
TERMINAL_IOCTLS = (0x5412, 0x541C)  # TIOCSTI, TIOCLINUX

# Denied outright, by name. Numbers per architecture below (from the kernel's unistd
# tables: arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h).
DENIED: tuple[str, ...] = (
    "keyctl", "add_key", "request_key",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "open_tree_attr", "mount_setattr",
    "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "setns", "acct", "quotactl", "quotactl_fd", "syslog", "lookup_dcookie", "vhangup",
    "settimeofday", "clock_settime",
    "iopl", "ioperm", "uselib", "_sysctl", "nfsservctl",
)

_COMMON_NEW = {  # numbered alike on every architecture since Linux 5.1
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
    "quotactl_fd": 443, "open_tree_attr": 467,
}


@dataclass(frozen=True)
class Arch:
    """A system-call table: the audit arch value and the numbers this filter uses."""

    name: str
    audit_arch: int
    numbers: Mapping[str, int]
    x32_bit: bool  # x86_64: numbers with bit 30 set are the x32 ABI


X86_64 = Arch("x86_64", AUDIT_ARCH_X86_64, {
    **_COMMON_NEW, "ioctl": 16, "clone": 56, "ptrace": 101, "syslog": 103, "uselib": 134,
    "vhangup": 153, "pivot_root": 155, "_sysctl": 156, "chroot": 161, "acct": 163,
    "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176,
    "quotactl": 179, "nfsservctl": 180, "lookup_dcookie": 212, "clock_settime": 227,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "open_by_handle_at": 304, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
}, x32_bit=True)

AARCH64 = Arch("aarch64", AUDIT_ARCH_AARCH64, {
    **_COMMON_NEW, "lookup_dcookie": 18, "ioctl": 29, "umount2": 39, "mount": 40,
    "pivot_root": 41, "nfsservctl": 42, "chroot": 51, "vhangup": 58, "quotactl": 60,
    "acct": 89, "unshare": 97, "kexec_load": 104, "init_module": 105,
    "delete_module": 106, "clock_settime": 112, "syslog": 116, "ptrace": 117,
    "reboot": 142, "settimeofday": 170, "add_key": 217, "request_key": 218, "keyctl": 219,
    "clone": 220, "swapon": 224, "swapoff": 225, "perf_event_open": 241,
    "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
    "process_vm_writev": 271, "finit_module": 273, "bpf": 280, "userfaultfd": 282,
    "kexec_file_load": 294,
}, x32_bit=False)

ARCHES: Mapping[str, Arch] = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64,
                              "arm64": AARCH64}


class UnsupportedArch(Exception):
    """No system-call table for this machine: the caller must not run unfiltered."""


def native_arch() -> Arch:
    """The table for the machine we run on (os.uname)."""
    machine = os.uname().machine
    arch = ARCHES.get(machine)
    if arch is None:
        raise UnsupportedArch(f"no seccomp system-call table for {machine!r} "
                              f"(known: {', '.join(sorted(ARCHES))})")
    return arch


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _ret(action: int) -> bytes:
    return _op(BPF_RET_K, action)


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def program(arch: Arch) -> list[bytes]:
    """The filter as a list of `struct sock_filter` (8 bytes each), in order."""
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    numbers = arch.numbers
    ops = [
        _op(BPF_LD_W_ABS, OFFSET_ARCH),
        _op(BPF_JEQ_K, arch.audit_arch, jt=1),  # ours: skip the kill
        _ret(SECCOMP_RET_KILL_PROCESS),
        _op(BPF_LD_W_ABS, OFFSET_NR),
    ]
    if arch.x32_bit:
        ops += [_op(BPF_JGE_K, X32_SYSCALL_BIT, jf=1), _ret(eperm)]
    for name in DENIED:
        if name in numbers:
            ops += [_op(BPF_JEQ_K, numbers[name], jf=1), _ret(eperm)]
    ops += [_op(BPF_JEQ_K, numbers["clone3"], jf=1), _ret(SECCOMP_RET_ERRNO | errno.ENOSYS)]
    for name in ("unshare", "clone"):  # flags are args[0] of both (an int: the low word)
        ops += [_op(BPF_JEQ_K, numbers[name], jf=4),
                _op(BPF_LD_W_ABS, _arg_low(0)),
                _op(BPF_JSET_K, CLONE_NAMESPACES, jf=1),
                _ret(eperm),
                _ret(SECCOMP_RET_ALLOW)]
    first, second = TERMINAL_IOCTLS
    ops += [_op(BPF_JEQ_K, numbers["ioctl"], jf=5),
            _op(BPF_LD_W_ABS, _arg_low(1)),  # the request (an unsigned int)
            _op(BPF_JEQ_K, first, jt=1),
            _op(BPF_JEQ_K, second, jf=1),
            _ret(eperm),
            _ret(SECCOMP_RET_ALLOW)]
    ops.append(_ret(SECCOMP_RET_ALLOW))
    return ops


def filter_bytes(arch: Arch | None = None) -> bytes:
    """The filter bwrap loads with `--seccomp FD` (raises UnsupportedArch)."""
    return b"".join(program(arch or native_arch()))


def describe(data: bytes) -> str:
    """A one-line record of the filter for the run's notes (no secret in it)."""
    arch = native_arch()
    return (f"seccomp: {arch.name} filter, {len(data) // 8} instructions, sha256 "
            f"{hashlib.sha256(data).hexdigest()[:16]}; denied with EPERM: keyrings, ptrace, "
            "mounts, namespaces, bpf, perf, userfaultfd, io_uring, modules, kexec, reboot; "
            "other ABIs killed")
