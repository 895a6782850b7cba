"""BPF from Python: the bpf() syscall through ctypes, and assemblers for classic and extended BPF.

Rules this module keeps:

- No compiler, no libbpf, no object files: programs are lists of instructions built here, so a
  source's filter is readable next to the code that uses it and needs nothing installed.
- Every kernel refusal is an ``OSError`` carrying the errno and a one-line reason (the verifier's last
  log line for a rejected program); the sources turn it into their ``SourceError``.
- Labels, not hand-counted jump offsets: both assemblers resolve them and refuse a jump that does not
  fit its field instead of silently wrapping.
- File descriptors returned here belong to the caller, who closes them (``os.close``).

Used by the AF_PACKET source (a classic filter on its socket) and the AF_XDP source (maps, an XDP
program, a BPF link attaching it to an interface).
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# --- the syscall -------------------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_PROG_LOAD = 5
BPF_LINK_CREATE = 28

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_XSKMAP = 17
BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37  # enum bpf_attach_type

BPF_ANY = 0  # map update flag: create or replace
XDP_FLAGS_SKB_MODE = 1 << 1  # generic XDP: runs on the skb, works on every device (veth included)
XDP_FLAGS_DRV_MODE = 1 << 2  # native XDP: in the driver, before an skb exists

_ATTR_SIZE = 128  # union bpf_attr is larger on new kernels; they accept any size with zeroed tail
_LOG_SIZE = 1 << 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys_bpf_number() -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf() syscall number unknown for {platform.machine()}")
    return number


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """Call bpf(cmd, attr, sizeof attr); return the result or raise OSError(errno)."""
    result = _libc.syscall(_sys_bpf_number(), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _attr(fmt: str, *values) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "") -> int:
    """Create a map; return its fd. ``name`` (<= 15 chars) shows in bpftool."""
    attr = _attr("=IIIIIIII16s", map_type, key_size, value_size, max_entries, 0, 0, 0, 0,
                 name.encode()[:15])
    return bpf(BPF_MAP_CREATE, attr)


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    attr = _attr("=I4xQQQ", map_fd, ctypes.addressof(key_buf), ctypes.addressof(value_buf), flags)
    bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes:
    """The value stored under ``key`` (per-CPU maps: ``value_size`` must cover every possible CPU)."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value_size)
    attr = _attr("=I4xQQQ", map_fd, ctypes.addressof(key_buf), ctypes.addressof(value_buf), 0)
    bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return value_buf.raw


def possible_cpus() -> int:
    """Number of possible CPUs (the row count of a per-CPU map value), from sysfs: '0-3' -> 4."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += (int(high) if high else int(low)) - int(low) + 1
    return count


class VerifierError(OSError):
    """The verifier rejected a program; the text ends with its reason."""


def prog_load(prog_type: int, insns: bytes, name: str = "", license: str = "GPL") -> int:
    """Load a program; return its fd. A verifier rejection raises VerifierError whose text ends with
    the verifier's last log line (e.g. 'R2 offset is outside of the packet')."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(_LOG_SIZE)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags,
    # prog_name[16]
    attr = _attr("=IIQQIIQII16s", prog_type, len(insns) // 8, ctypes.addressof(code),
                 ctypes.addressof(lic), 1, _LOG_SIZE, ctypes.addressof(log), 0, 0, name.encode()[:15])
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
        # the verifier ends with a summary line ("processed N insns ..."); the reason is just before
        reasons = [line for line in lines if not line.startswith(("processed ", "verification time"))]
        if reasons:
            raise VerifierError(exc.errno, f"{exc.strerror}: verifier: {reasons[-1].strip()}") from None
        raise


def link_create_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach an XDP program to an interface through a BPF link; return the link's fd.

    The program stays attached while the link fd is open and is detached when it closes, also when
    the process dies, so a crashed handler never leaves a program redirecting the feed to nowhere.
    """
    attr = _attr("=IIII", prog_fd, ifindex, BPF_XDP, flags)
    return bpf(BPF_LINK_CREATE, attr)


# --- extended BPF ------------------------------------------------------------------------------------

# registers
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# classes, sizes, modes, sources
_LD, _LDX, _ST, _STX, _ALU64, _JMP = 0x00, 0x01, 0x02, 0x03, 0x07, 0x05
SIZE_W, SIZE_H, SIZE_B, SIZE_DW = 0x00, 0x08, 0x10, 0x18
_MEM, _IMM = 0x60, 0x00
_K, _X = 0x00, 0x08

# ALU operations
ADD, SUB, MUL, OR, AND, LSH, RSH, XOR, MOV = 0x00, 0x10, 0x20, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0
# jump operations (unsigned comparisons)
JA, JEQ, JGT, JGE, JSET, JNE, JLT, JLE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0xA0, 0xB0
_CALL, _EXIT = 0x80, 0x90

BPF_PSEUDO_MAP_FD = 1  # src_reg of a 64-bit immediate load that names a map by fd


class EbpfAssembler:
    """Builds an eBPF program; jumps name labels, ``assemble()`` resolves them.

    Each method appends one instruction (``ld_map_fd`` two) and returns nothing; ``label(name)`` marks
    the position of the next instruction.
    """

    def __init__(self) -> None:
        self._insns: list[tuple[int, int, int, int, int, str | None]] = []  # code, dst, src, off, imm, label
        self._labels: dict[str, int] = {}

    def _emit(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0,
              target: str | None = None) -> None:
        self._insns.append((code, dst, src, off, imm, target))

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def alu_imm(self, op: int, dst: int, imm: int) -> None:
        self._emit(_ALU64 | op | _K, dst, 0, 0, imm)

    def alu_reg(self, op: int, dst: int, src: int) -> None:
        self._emit(_ALU64 | op | _X, dst, src)

    def mov_imm(self, dst: int, imm: int) -> None:
        self.alu_imm(MOV, dst, imm)

    def mov_reg(self, dst: int, src: int) -> None:
        self.alu_reg(MOV, dst, src)

    def load(self, size: int, dst: int, src: int, off: int) -> None:
        """dst = *(size *)(src + off)"""
        self._emit(_LDX | _MEM | size, dst, src, off)

    def store_reg(self, size: int, dst: int, off: int, src: int) -> None:
        """*(size *)(dst + off) = src"""
        self._emit(_STX | _MEM | size, dst, src, off)

    def store_imm(self, size: int, dst: int, off: int, imm: int) -> None:
        """*(size *)(dst + off) = imm"""
        self._emit(_ST | _MEM | size, dst, 0, off, imm)

    def ld_map_fd(self, dst: int, map_fd: int) -> None:
        """dst = the map whose fd is ``map_fd`` (a two-slot 64-bit immediate load)."""
        self._emit(_LD | SIZE_DW | _IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd)
        self._emit(0, 0, 0, 0, 0)

    def jump_imm(self, op: int, dst: int, imm: int, target: str) -> None:
        """if (dst OP imm) goto target"""
        self._emit(_JMP | op | _K, dst, 0, 0, imm, target)

    def jump_reg(self, op: int, dst: int, src: int, target: str) -> None:
        """if (dst OP src) goto target"""
        self._emit(_JMP | op | _X, dst, src, 0, 0, target)

    def goto(self, target: str) -> None:
        self._emit(_JMP | JA, 0, 0, 0, 0, target)

    def call(self, helper: int) -> None:
        self._emit(_JMP | _CALL, 0, 0, 0, helper)

    def exit(self) -> None:
        self._emit(_JMP | _EXIT)

    def assemble(self) -> bytes:
        out = bytearray()
        for pos, (code, dst, src, off, imm, target) in enumerate(self._insns):
            if target is not None:
                if target not in self._labels:
                    raise ValueError(f"jump to undefined label {target!r}")
                off = self._labels[target] - pos - 1
                if not -32768 <= off <= 32767:
                    raise ValueError(f"jump to {target!r} does not fit 16 bits")
            imm = (imm + (1 << 31)) % (1 << 32) - (1 << 31)  # any 32-bit pattern, as the signed field holds it
            out += struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
        return bytes(out)


# --- classic BPF (socket filters) ------------------------------------------------------------------

# classes, sizes, modes
CB_LD, CB_LDX, CB_JMP, CB_RET = 0x00, 0x01, 0x05, 0x06
CB_W, CB_H, CB_B = 0x00, 0x08, 0x10
CB_IMM, CB_ABS, CB_IND, CB_MSH = 0x00, 0x20, 0x40, 0xA0
CB_JA, CB_JEQ, CB_JGT, CB_JSET = 0x00, 0x10, 0x20, 0x40
CB_K = 0x00

# negative offsets the kernel resolves at run time (include/uapi/linux/filter.h)
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0  # ld [SKF_AD_OFF + SKF_AD_PROTOCOL]: skb->protocol in host order
SKF_NET_OFF = -0x100000  # loads relative to the network (IP) header, wherever the link layer ends
BPF_MAXINSNS = 4096

SOL_SOCKET = 1
SO_ATTACH_FILTER = 26


class ClassicAssembler:
    """Builds a classic BPF program; conditional jumps name a true and a false label.

    Classic conditional jumps hold 8-bit offsets: ``assemble()`` raises ValueError when one does not
    fit, so callers put long jumps behind an unconditional ``goto`` (32-bit offset).
    """

    def __init__(self) -> None:
        self._insns: list[tuple[int, str | None, str | None, int, str | None]] = []  # code, jt, jf, k, ja
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def load(self, size: int, mode: int, k: int) -> None:
        """A = packet[k] (ABS), packet[X + k] (IND) or k (IMM), big-endian."""
        self._insns.append((CB_LD | size | mode, None, None, k, None))

    def load_x_ip_header_length(self, k: int) -> None:
        """X = 4 * (packet[k] & 0xf): the IPv4 header length."""
        self._insns.append((CB_LDX | CB_B | CB_MSH, None, None, k, None))

    def jump(self, op: int, k: int, true: str | None, false: str | None) -> None:
        """if (A OP k) goto true else goto false; None means the next instruction."""
        self._insns.append((CB_JMP | op | CB_K, true, false, k, None))

    def goto(self, target: str) -> None:
        self._insns.append((CB_JMP | CB_JA, None, None, 0, target))

    def ret(self, k: int) -> None:
        """Accept ``k`` bytes of the packet (0: drop it)."""
        self._insns.append((CB_RET | CB_K, None, None, k, None))

    def _offset(self, pos: int, target: str | None, limit: int) -> int:
        if target is None:
            return 0
        if target not in self._labels:
            raise ValueError(f"jump to undefined label {target!r}")
        off = self._labels[target] - pos - 1
        if not 0 <= off <= limit:
            raise ValueError(f"jump to {target!r} spans {off} instructions (classic BPF allows 0..{limit})")
        return off

    def assemble(self) -> bytes:
        if len(self._insns) > BPF_MAXINSNS:
            raise ValueError(f"{len(self._insns)} instructions (classic BPF allows {BPF_MAXINSNS})")
        out = bytearray()
        for pos, (code, jt, jf, k, ja) in enumerate(self._insns):
            if ja is not None:
                k = self._offset(pos, ja, 0xFFFFFFFF)
            out += struct.pack("=HBBI", code, self._offset(pos, jt, 255), self._offset(pos, jf, 255),
                               k & 0xFFFFFFFF)
        return bytes(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach_classic_filter(sock, program: bytes) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffers may go after the call."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(code))
    sock.setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
