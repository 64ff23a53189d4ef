package zds

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
)

const (
	// Version is the protocol version a proxy sends in Hello and the agent accepts.
	Version = 1
	// MaxMessageSize bounds one packet. A workload is a few hundred bytes; the bound keeps a
	// packet well under the socket's send buffer, which a SOCK_SEQPACKET message must fit.
	MaxMessageSize = 32 << 10
	// oobFDs is the room for fds in a read's control buffer: more than the one a message may
	// carry, so that a packet with too many is seen (and its fds closed) rather than truncated.
	oobFDs = 8
)

var (
	// ErrNoProxy: no proxy is connected; the workload record is kept and replayed on connect.
	ErrNoProxy = errors.New("zds: no proxy connected")
	// ErrProxyGone: a proxy's connection closed (or timed out) before it acked.
	ErrProxyGone = errors.New("zds: proxy connection closed before ack")
	// ErrClosed: the Server's Run has returned.
	ErrClosed = errors.New("zds: server closed")
	// errMalformed marks input that closes a connection.
	errMalformed = errors.New("malformed message")
)

// AckError is a proxy's refusal of a message: the error string it put in its Ack.
type AckError struct{ Msg string }

func (e *AckError) Error() string { return "proxy: " + e.Msg }

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, a...))
}

// packetConn reads and writes whole packets on a SOCK_SEQPACKET connection.
type packetConn struct {
	c   *net.UnixConn
	buf []byte
	oob []byte
}

func newPacketConn(c *net.UnixConn) *packetConn {
	return &packetConn{c: c, buf: make([]byte, MaxMessageSize), oob: make([]byte, unix.CmsgSpace(4*oobFDs))}
}

// read returns the next packet and the fds that came with it, which the caller owns. The
// returned bytes are valid until the next read. On error no fds are returned: any received are
// closed here.
func (p *packetConn) read() ([]byte, []int, error) {
	n, oobn, flags, _, err := p.c.ReadMsgUnix(p.buf, p.oob)
	// Parse the control data even on error: a zero-length packet (io.EOF) may still carry fds.
	fds, perr := parseRights(p.oob[:oobn])
	switch {
	case err != nil:
	case flags&unix.MSG_TRUNC != 0:
		err = malformed("packet larger than %d bytes", MaxMessageSize)
	case flags&unix.MSG_CTRUNC != 0:
		err = malformed("control data truncated (more than %d fds?)", oobFDs)
	case perr != nil:
		err = perr
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	return p.buf[:n], fds, nil
}

// write sends one packet, with fd (if not nil) as SCM_RIGHTS, by deadline.
func (p *packetConn) write(b []byte, fd *os.File, deadline time.Time) error {
	var oob []byte
	if fd != nil {
		oob = unix.UnixRights(int(fd.Fd()))
	}
	if err := p.c.SetWriteDeadline(deadline); err != nil {
		return err
	}
	n, oobn, err := p.c.WriteMsgUnix(b, oob, nil)
	if err == nil && (n != len(b) || oobn != len(oob)) {
		err = fmt.Errorf("short write: %d of %d bytes, %d of %d control", n, len(b), oobn, len(oob))
	}
	return err
}

// parseRights returns every fd in SCM_RIGHTS messages of oob. Any other control message is an
// error; the fds found are returned anyway so that the caller closes them.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, malformed("control data: %v", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			err = malformed("unexpected control message level %d type %d", m.Header.Level, m.Header.Type)
			continue
		}
		got, perr := unix.ParseUnixRights(&m)
		if perr != nil {
			err = malformed("SCM_RIGHTS: %v", perr)
			continue
		}
		fds = append(fds, got...)
	}
	return fds, err
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func encode(m proto.Message) ([]byte, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("message of %d bytes exceeds %d", len(b), MaxMessageSize)
	}
	return b, nil
}

// decodeAgent parses an agent → proxy packet. It takes ownership of fds: on success an
// AddWorkload's one fd is returned as a file (nil for other messages); on error all are closed.
func decodeAgent(b []byte, fds []int) (*zdsv1.AgentMessage, *os.File, error) {
	m := new(zdsv1.AgentMessage)
	if err := proto.Unmarshal(b, m); err != nil {
		closeFDs(fds)
		return nil, nil, malformed("%v", err)
	}
	var err error
	wantFDs := 0
	switch p := m.GetPayload().(type) {
	case *zdsv1.AgentMessage_Add:
		wantFDs = 1
		if p.Add.GetWorkload().GetUid() == "" {
			err = malformed("AddWorkload without a workload uid")
		}
	case *zdsv1.AgentMessage_Keep:
		if p.Keep.GetUid() == "" {
			err = malformed("KeepWorkload without a uid")
		}
	case *zdsv1.AgentMessage_Del:
		if p.Del.GetUid() == "" {
			err = malformed("DelWorkload without a uid")
		}
	case *zdsv1.AgentMessage_SnapshotSent:
	default:
		err = malformed("agent message with no known payload")
	}
	if err == nil && len(fds) != wantFDs {
		err = malformed("%d fds with a message that takes %d", len(fds), wantFDs)
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	if wantFDs == 0 {
		return m, nil, nil
	}
	return m, os.NewFile(uintptr(fds[0]), "netns"), nil
}

// decodeProxy parses a proxy → agent packet. It takes ownership of fds; a proxy never sends any.
func decodeProxy(b []byte, fds []int) (*zdsv1.ProxyMessage, error) {
	if len(fds) != 0 {
		closeFDs(fds)
		return nil, malformed("proxy message with %d fds", len(fds))
	}
	m := new(zdsv1.ProxyMessage)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, malformed("%v", err)
	}
	switch m.GetPayload().(type) {
	case *zdsv1.ProxyMessage_Hello, *zdsv1.ProxyMessage_Ack:
		return m, nil
	}
	return nil, malformed("proxy message with no known payload")
}
