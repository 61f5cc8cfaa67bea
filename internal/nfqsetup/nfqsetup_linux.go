//go:build linux

package nfqsetup

import (
	"encoding/binary"
	"fmt"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// msgPacket is the netlink message type of a queued packet:
// NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
// (include/uapi/linux/netfilter/nfnetlink_queue.h).
const msgPacket = 3<<8 | 0

// Prepare readies nf, opened but not yet registered, for binding its queue:
// it sets the receive buffer to rcvBuf bytes, turns off ENOBUFS reports (a
// queue that overflows is the kernel's business: it accepts or drops the
// packet according to the queue's flags and counts it in
// /proc/net/netfilter/nfnetlink_queue), and attaches the socket filter
// that drops packet messages until Ready.
func Prepare(nf *nfqueue.Nfqueue, rcvBuf int) error {
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		return fmt.Errorf("set NETLINK_NO_ENOBUFS: %w", err)
	}
	rc, err := nf.Con.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// SO_RCVBUFFORCE passes net.core.rmem_max.
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf)
	}); err != nil {
		return err
	}
	if serr != nil {
		// In a container, take what rmem_max allows.
		if err := nf.Con.SetReadBuffer(rcvBuf); err != nil {
			return fmt.Errorf("set receive buffer to %d bytes: %w", rcvBuf, err)
		}
	}
	filter, err := bpf.Assemble(dropPacketMessages())
	if err != nil {
		return err
	}
	if err := nf.Con.SetBPF(filter); err != nil {
		return fmt.Errorf("attach socket filter: %w", err)
	}
	return nil
}

// Ready removes the socket filter of Prepare; call it once the queue is
// bound (after Register).
func Ready(nf *nfqueue.Nfqueue) error {
	if err := nf.Con.RemoveBPF(); err != nil {
		return fmt.Errorf("remove socket filter: %w", err)
	}
	return nil
}

// AcceptBefore accepts the packets queued before first, the id of the
// first packet message the receive loop read after Ready: the filter of
// Prepare dropped their messages. The kernel numbers a queue's packets
// from 1 and sends their messages in order, and a batch verdict applies to
// every packet up to its id. It returns the number of packets accepted.
func AcceptBefore(nf *nfqueue.Nfqueue, first uint32) (uint32, error) {
	if first <= 1 {
		return 0, nil
	}
	if err := nf.SetVerdictBatch(first-1, nfqueue.NfAccept); err != nil {
		return 0, fmt.Errorf("accept the %d packets queued during setup: %w", first-1, err)
	}
	return first - 1, nil
}

// dropPacketMessages is a socket filter that drops netlink messages of
// type msgPacket and keeps the others.
func dropPacketMessages() []bpf.Instruction {
	// nlmsg_type is in host byte order; BPF loads in network byte order.
	var typ [2]byte
	binary.NativeEndian.PutUint16(typ[:], msgPacket)
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 2}, // struct nlmsghdr: len (4), type (2)
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(binary.BigEndian.Uint16(typ[:])), SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff_ffff}, // keep the whole message
		bpf.RetConstant{Val: 0},           // drop it
	}
}
