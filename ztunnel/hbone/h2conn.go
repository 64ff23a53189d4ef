package hbone

// Locking rules of the HTTP/2 connection. Four rules keep it correct; each h2*.go file opens with
// the ones its code must keep, and why. Rules 1 to 4 below are what those files refer to.
//
//  1. Lock order: a stream's wmu (one Write at a time), then the connection's wmu (the write
//     lock), then mu; wdogMu and corkConn.mu are leaves. Nothing waits while holding mu: no socket
//     read or write, no wmu.Lock. The write lock is held across socket writes, which block for as
//     long as the peer does not read (up to PingTimeout); whoever waited for it holding mu would
//     stall every stream's Read, the handling of every frame and every Close behind one stuck
//     write. Kept everywhere; h2write.go and h2ctrl.go take mu under wmu.
//
//  2. One reader, and always one: only the read token holder reads the socket, and while the
//     connection runs the token is held, or readLoop was signalled to take it, or bgTimer is armed
//     to let it. A socket nobody reads answers no PING, shows no writer the WINDOW_UPDATE it waits
//     for, and leaves the peer blocked writing to us. A holder is cut short only while it waits
//     for a frame header: mid-frame the framing, and with it the connection, would be lost. Kept
//     in h2token.go (taking, passing on, interrupting the token), h2read.go (what the holder does
//     with a frame), and conn.go's Read and Write and client.go's openStream, which take it.
//
//  3. The reader never waits to write: the token holder only tries the write lock, never waits
//     for it or for a socket write. What it must send (SETTINGS and PING acknowledgements,
//     RST_STREAM, WINDOW_UPDATE, refusals) is queued, and whoever holds the write lock writes the
//     queue. Under bulk traffic both ways each end's writer may be blocked on a socket buffer that
//     only the other end's reader drains: a reader waiting to write would stop reading, and the
//     two ends would stall each other until the watchdog ended the connection. Kept in h2ctrl.go
//     (the queue, bounded so that a peer cannot grow it while a write is stuck) and by every
//     frame handler (h2read.go, h2flow.go, serverHeaders, clientHeaders) and what they call
//     (h2stream.go): queueLocked, then flushCtrlAsync once mu is released, never flushCtrl.
//
//  4. Frames go out under the write lock, in write sessions the watchdog bounds, and a stream's
//     frames only while it may still send: its DATA only if, checked under mu with the write lock
//     held, neither its END_STREAM nor its RST_STREAM went or was queued first (sendErrLocked).
//     Those two can be queued at any time by any goroutine; the check under the lock is what keeps
//     DATA from following them (RFC 9113 §5.1), and the queue, written under the same lock, puts
//     them after DATA already going out. A writer waiting for the lock must be able to give up
//     (deadline, Close, reset, the connection's end), and Close never waits for it: its holder
//     may be blocked on a peer that does not read. Kept in h2write.go, h2ctrl.go, conn.go's
//     Write and respond, and fail below (its GOAWAY waits for the lock at most goAwayWait).
//
// Flow control (h2flow.go) and stream state (h2stream.go) are data under mu; the rules that keep
// them right (every received byte returns to the connection window once; a stream retires once,
// and only when closed on the wire) open those files.
//
// This file: the type, construction and the connection's lifecycle. fail sets c.err first, under
// mu; queueLocked and the waits for the token, for window and for the write lock look at it under
// mu, so once it is set nothing more is queued, and fail wakes every waiter (rcond, wcond,
// bgcond, wabort) to see it.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2conn is one HTTP/2 connection (RFC 9113), either end, specialised for CONNECT tunnels: every
// stream is a byte stream with half-close, there are no request or response bodies to frame,
// no trailers, no push and no priorities. Frames are encoded and parsed by x/net's Framer and
// hpack; this type owns the connection state, flow control and the streams.
//
// Reading (h2token.go, h2read.go): whoever needs a frame reads the socket, holding the read
// token. A Read that finds no data takes the token when it is free and reads until its own data
// arrives, straight into its buffer, so that on a busy tunnel a message costs no goroutine
// hand-off at all, as on a plain TLS connection; a Read that finds it taken waits for the holder
// to deliver. The connection's own reader goroutine (readLoop) takes the token when nobody has
// for bgDelay, or a holder left for good, so that PINGs, SETTINGS, new streams and a closed
// socket are always seen, and hands it back once it has delivered to a waiting Read.
//
// Writing (h2write.go, h2ctrl.go): writers (a stream's Write, CloseWrite, Close, the handler's
// Accept) write their frames themselves under wmu, straight into the TLS connection: no writer
// goroutine. Frames a reader must send go through the control queue.
//
// Locking: the four rules at the top of this file. Stream fields marked "c.mu" are guarded by
// the connection's mu.
type h2conn struct {
	nc     net.Conn  // the TLS connection frames travel on (plain in protocol tests)
	raw    *corkConn // under the TLS connection, to turn one write session into one syscall; may be nil
	server bool
	flow   FlowConfig
	// maxStreams is the SETTINGS_MAX_CONCURRENT_STREAMS a server advertises.
	maxStreams uint32
	// peerUntil (server side) is when the client certificate of the handshake expires: TLS
	// checks it only then, so new streams after it are refused and the connection goes away.
	peerUntil time.Time

	fr *http2.Framer // reads: read token holder only; writes: under wmu
	br *bufio.Reader // between the connection and the Framer

	// Read token holder only.
	scratch     []byte
	sawSettings bool
	direct      *stream // the holder's own stream, whose Read buffer is directBuf
	directBuf   []byte

	// Server hooks, called by the read token holder without locks held. parse checks a
	// request; serve runs a stream whose request was accepted (it must not block).
	parse func(fields []hpack.HeaderField) (*Request, int)
	serve func(s *stream, req *Request)
	// baseCtx is the parent of the server's per-stream Handler contexts.
	baseCtx context.Context
	// handlerWG counts the Handlers running (server).
	handlerWG sync.WaitGroup
	// onGone is called once the connection no longer takes new streams (GOAWAY either way, or
	// closed); onClose once it is closed. Both without locks held.
	onGone  func()
	onClose func()
	// goAwayWait is the variable of that name when the connection was made.
	goAwayWait time.Duration

	// wmu is the write lock. A stream's writer that finds it taken waits in lockStreamWrite, so
	// that it can give up when its deadline passes or it is closed (abortWritersLocked).
	wmu        sync.Mutex
	wmuWaiting atomic.Int32 // lockStreamWrite waiters, changed under mu: unlockWrite wakes them
	// The write watchdog (startWriteLocked): wstart is when the write session in progress began,
	// in nanoseconds since epoch plus one (0: none); wdog fires at wdogAt, both set under wdogMu.
	epoch      time.Time
	wstart     atomic.Int64
	wdogAt     atomic.Int64
	wdogMu     sync.Mutex
	wdog       *time.Timer
	henc       *hpack.Encoder
	hbuf       bytes.Buffer
	encLimit   uint32
	ctrlSpare  []ctrlFrame
	dataHeader [frameHeaderLen]byte

	ctrlPending atomic.Bool
	framesRead  atomic.Uint64

	mu           sync.Mutex
	wcond        sync.Cond // writers waiting for send window; broadcast on any window or error change
	streams      map[uint32]*stream
	ctrl         []ctrlFrame
	ctrlOverflow bool          // the peer made us queue more than maxCtrlQueue frames
	wabort       chan struct{} // closed and replaced to wake them (abortWritersLocked)
	nextID       uint32        // client: the next stream to open
	lastPeerID   uint32        // server: the highest stream the client opened
	handlers     uint32        // server: streams open or whose handler still runs
	// The last streams that closed, to tell a frame that crossed their end from a stream ID out
	// of order (RFC 9113 §5.1).
	recentClosed   [16]uint32
	recentNext     uint32
	peerMaxFrame   uint32
	peerInitWindow uint32
	peerMaxStreams uint32
	peerTableSize  uint32
	sendWindow     int64 // connection send window
	recvWindow     int64 // bytes the peer may still send on the connection
	recvUnacked    int64 // bytes consumed and not yet returned with WINDOW_UPDATE
	goAwaySent     bool
	goAwayLast     uint32 // the last-stream-id of the GOAWAY sent (server): later ones never exceed it
	goAwayRecv     bool
	goneNotified   bool
	err            error         // why the connection ended; nil while it runs
	settingsc      chan struct{} // closed at the peer's first SETTINGS
	done           chan struct{} // closed when the connection ends
	kaSeen         uint64
	kaWaiting      bool
	ka             *time.Timer

	// The read token (h2token.go), guarded by mu.
	tHeld         bool
	tHolder       *stream   // the stream whose Read, Write or CONNECT holds it; nil for readLoop
	tReader       bool      // the holder is tHolder's Read
	tQueue        []*stream // streams waiting for data or a response while someone else reads
	winWaiters    int       // writers waiting for window while someone else reads
	delivered     bool      // the holder handed something to a waiter
	deliveredData bool      // ... and it was data: that Read will likely be back for more
	bgIdle        bool      // readLoop waits for bgTimer before taking the free token
	bgArmed       bool      // bgTimer runs
	bgReleases    uint64    // token releases that left it to bgTimer
	bgArmedAt     uint64    // bgReleases when bgTimer was armed
	bgcond        sync.Cond
	bgTimer       *time.Timer

	// tState tells an interrupter whether the token holder waits for a frame header, the only
	// place a read may be cut short: readIdle, readWaitHeader, or readInterrupted once a past
	// read deadline was set (under mu).
	tState atomic.Int32
	// corked: the current write session collects its records in raw (wmu).
	corked bool
}

// goAwayWait bounds how long a connection ending on a protocol error waits for the write lock to
// send its GOAWAY. A variable: tests, whose peers always read, lengthen it so that a slow
// machine's scheduling does not lose the GOAWAY they check.
var goAwayWait = 100 * time.Millisecond

// Wire constants.
const (
	// maxFrameRead is the SETTINGS_MAX_FRAME_SIZE we advertise. DATA payloads go straight to the
	// reader's buffer or the stream's chunks, never into a buffer of this size; only other
	// frames (HEADERS) use the Framer's, which grows to the largest one received.
	maxFrameRead = 1 << 20
	// initialWindow is HTTP/2's window before SETTINGS and WINDOW_UPDATE (RFC 9113 §6.9.2).
	initialWindow = 65535
	// maxWriteBurst bounds the DATA one Write sends under the write lock, so that streams
	// sharing a connection take turns.
	maxWriteBurst = 64 << 10
	// scratchSize is the reader's buffer for DATA that no Read is waiting for.
	scratchSize = 16 << 10
	// bgDelay is how long the read token stays free after a Read took its data before readLoop
	// takes it: a tunnel's next Read normally comes sooner and then reads the socket itself.
	bgDelay = time.Millisecond
	// maxStreamID is the largest stream ID (RFC 9113 §5.1.1); idReserve is how many IDs
	// before it a client connection stops taking new streams (see usable).
	maxStreamID = 1<<31 - 1
	idReserve   = 1 << 16
	// maxCtrlQueue bounds the control frames waiting for the write lock (x/net's limit).
	maxCtrlQueue = 10000
	// frameHeaderLen is the size of an HTTP/2 frame header.
	frameHeaderLen = 9
	// recordData is the most DATA payload whose frame fits one TLS record.
	recordData = 16<<10 - frameHeaderLen
)

var (
	errConnGone    = errors.New("hbone: connection closed")
	errPingTimeout = errors.New("hbone: peer did not answer PING")
	// errWriteTimeout: a socket write blocked for PingTimeout (the peer stopped reading).
	errWriteTimeout = fmt.Errorf("%w: write blocked for PingTimeout: %w", errConnGone, os.ErrDeadlineExceeded)
	errGoAway       = errors.New("hbone: stream not processed before GOAWAY")
	errRefused      = errors.New("hbone: stream refused")
)

// resetError is the error a stream's reads and writes return after the peer reset it.
type resetError struct{ code http2.ErrCode }

func (e resetError) Error() string { return "hbone: stream reset by peer: " + e.code.String() }

func newH2Conn(nc net.Conn, raw *corkConn, server bool, flow FlowConfig) *h2conn {
	c := &h2conn{
		nc: nc, raw: raw, server: server, flow: flow,
		streams:        map[uint32]*stream{},
		nextID:         1,
		peerMaxFrame:   16 << 10,
		peerInitWindow: initialWindow,
		peerMaxStreams: 1<<32 - 1, // unlimited until the peer says otherwise (RFC 9113 §6.5.2)
		peerTableSize:  4096,
		sendWindow:     initialWindow,
		recvWindow:     int64(flow.connWindow()),
		encLimit:       4096,
		settingsc:      make(chan struct{}),
		done:           make(chan struct{}),
		scratch:        make([]byte, scratchSize),
		goAwayWait:     goAwayWait,
		wabort:         make(chan struct{}),
	}
	c.wcond.L = &c.mu
	c.bgcond.L = &c.mu
	c.bgTimer = time.AfterFunc(time.Hour, c.bgWake)
	c.bgTimer.Stop()
	c.epoch = time.Now()
	c.wdog = time.AfterFunc(time.Hour, c.writeWatchdog)
	c.wdog.Stop()
	c.br = bufio.NewReaderSize(nc, 4<<10)
	c.fr = http2.NewFramer(nc, c.br)
	c.fr.SetMaxReadFrameSize(maxFrameRead)
	c.fr.SetReuseFrames()
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = uint32(flow.MaxHeaderBytes)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start sends our preface (the client's magic string, then SETTINGS and the connection window)
// and starts the reader. A server reads the client's magic first, bounded by deadline.
func (c *h2conn) start(deadline time.Time) error {
	if c.server {
		c.nc.SetReadDeadline(deadline)
		var buf [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(c.br, buf[:]); err != nil {
			return fmt.Errorf("read preface: %w", err)
		}
		if string(buf[:]) != http2.ClientPreface {
			return errors.New("bad client preface")
		}
		c.nc.SetReadDeadline(time.Time{})
	}
	c.beginWrite(true)
	var err error
	if !c.server {
		_, err = io.WriteString(c.nc, http2.ClientPreface)
	}
	if err == nil {
		settings := []http2.Setting{
			{ID: http2.SettingInitialWindowSize, Val: uint32(c.flow.streamWindow())},
			{ID: http2.SettingMaxFrameSize, Val: maxFrameRead},
			{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.flow.MaxHeaderBytes)},
		}
		if c.server {
			settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.maxStreams})
		} else {
			settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
		}
		err = c.fr.WriteSettings(settings...)
	}
	if err == nil {
		err = c.fr.WriteWindowUpdate(0, uint32(c.flow.connWindow()-initialWindow))
	}
	if err := c.endWrite(err); err != nil {
		return err
	}
	c.mu.Lock() // keepalive reads c.ka under mu
	c.ka = time.AfterFunc(c.flow.PingInterval, c.keepalive)
	c.mu.Unlock()
	return nil
}

// waitSettings waits for the peer's first SETTINGS, so that its limits are known before the
// connection carries streams.
func (c *h2conn) waitSettings(done <-chan struct{}) error {
	select {
	case <-c.settingsc:
		return nil
	case <-c.done:
		return c.closedErr()
	case <-done:
		return errors.New("hbone: gave up waiting for the peer's SETTINGS")
	}
}

func (c *h2conn) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// keepalive runs every PingInterval: after a whole interval without a frame from the peer it
// sends a PING, and when nothing arrives for PingTimeout after that, it ends the connection.
// This is how a peer that vanished without a FIN is found.
func (c *h2conn) keepalive() {
	n := c.framesRead.Load()
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if n != c.kaSeen {
		c.kaSeen, c.kaWaiting = n, false
		c.ka.Reset(c.flow.PingInterval)
		c.mu.Unlock()
		return
	}
	if c.kaWaiting {
		c.mu.Unlock()
		c.fail(errPingTimeout, http2.ErrCodeNo, false)
		return
	}
	c.kaWaiting = true
	c.queueLocked(ctrlFrame{kind: ctrlPing, data: [8]byte{'h', 'b', 'o', 'n', 'e', 'k', 'a'}})
	c.ka.Reset(c.flow.PingTimeout)
	c.mu.Unlock()
	c.flushCtrl()
}

// shutdown starts a graceful close: GOAWAY, no new streams, and the connection closes when its
// last stream ends.
func (c *h2conn) shutdown() {
	c.mu.Lock()
	if c.goAwaySent || c.err != nil {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	c.goAwayLast = c.lastPeerID
	c.queueLocked(ctrlFrame{kind: ctrlGoAway, id: c.lastPeerID, val: uint32(http2.ErrCodeNo)})
	idle := len(c.streams) == 0
	c.mu.Unlock()
	c.flushCtrl()
	c.notifyGone()
	if idle {
		c.closeGracefully()
	}
}

// closeGracefully closes a connection that has no streams left, sending what is still queued
// (the GOAWAY, a last RST_STREAM) if the write lock lets it within goAwayWait.
func (c *h2conn) closeGracefully() { c.fail(errConnGone, http2.ErrCodeNo, true) }

// close ends the connection, cutting open streams.
func (c *h2conn) close() { c.fail(errConnGone, http2.ErrCodeNo, false) }

// fail ends the connection with err: every stream fails, GOAWAY with code goes out when
// goAway is set and the write lock is free, and the socket closes.
func (c *h2conn) fail(err error, code http2.ErrCode, goAway bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	for _, s := range c.streams {
		if s.recvDone {
			// Everything the peer sent arrived: it stays readable, as after a TCP FIN.
			if s.werr == nil {
				s.werr = err
			}
			s.c.interruptLocked(s)
		} else {
			s.failLocked(err)
		}
		s.reset = true
		s.wireClosed = true
		if s.cancel != nil {
			s.cancel()
		}
	}
	clear(c.streams)
	var pending []ctrlFrame
	if goAway && code == http2.ErrCodeNo {
		// Closing gracefully: what was queued before the end (a last END_STREAM or
		// RST_STREAM, the GOAWAY itself) goes out first. After a protocol error (a flood,
		// say) only the GOAWAY does.
		pending = c.ctrl
	}
	c.ctrl = nil
	c.ctrlPending.Store(false)
	c.abortWritersLocked()
	c.bgcond.Broadcast()
	c.bgTimer.Stop()
	close(c.done)
	last := c.lastPeerID
	if c.goAwaySent {
		// Streams that crossed our first GOAWAY were refused; a later GOAWAY must not claim
		// them (RFC 9113 §6.8: the last-stream-id never increases).
		last = min(last, c.goAwayLast)
	}
	ka := c.ka
	c.mu.Unlock()
	if ka != nil {
		ka.Stop()
	}
	c.wdog.Stop()
	if goAway {
		// Tell the peer why, if a write in progress lets us within goAwayWait: it may be
		// blocked on a peer that stopped reading, and then closing the socket is the answer.
		written := make(chan struct{})
		go func() {
			defer close(written)
			c.wmu.Lock()
			defer c.unlockWrite()
			// The write deadline of an idle connection may have passed: this write has its own.
			c.nc.SetWriteDeadline(time.Now().Add(c.goAwayWait))
			if c.raw != nil {
				c.raw.cork()
			}
			werr := c.writeFramesLocked(pending)
			if werr == nil && !(code == http2.ErrCodeNo && slices.ContainsFunc(pending, func(f ctrlFrame) bool { return f.kind == ctrlGoAway })) {
				werr = c.fr.WriteGoAway(last, code, nil)
			}
			if c.raw != nil {
				if ferr := c.raw.uncork(); werr == nil {
					werr = ferr
				}
			}
			_ = werr // best effort: the connection closes either way
		}()
		t := time.NewTimer(c.goAwayWait)
		select {
		case <-written:
		case <-t.C:
		}
		t.Stop()
	}
	if c.raw != nil {
		// Skip TLS's close_notify, which could wait on a peer that stopped reading.
		c.raw.Close()
	}
	c.nc.Close()
	c.notifyGone()
	if c.onClose != nil {
		c.onClose()
	}
}

// notifyGone calls onGone once.
func (c *h2conn) notifyGone() {
	c.mu.Lock()
	first := !c.goneNotified
	c.goneNotified = true
	c.mu.Unlock()
	if first && c.onGone != nil {
		c.onGone()
	}
}

// usable reports whether the connection takes new streams, and how many at once the peer allows.
// exhausted reports a client connection near the end of its stream IDs, which is to be shut
// down gracefully and replaced: it is not usable from idReserve IDs before the end, so that
// the streams several callers reserved at once still get IDs.
func (c *h2conn) usable() (ok bool, limit uint32, exhausted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	running := c.err == nil && !c.goAwayRecv && !c.goAwaySent
	exhausted = running && !c.server && c.nextID > maxStreamID-idReserve
	return running && !exhausted, c.peerMaxStreams, exhausted
}
