package hbone

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
// Reading: whoever needs a frame reads the socket. One goroutine at a time holds the read token
// and reads and handles frames for every stream: a Read that finds no data takes the token when
// it is free and reads until its own data arrives, straight into its buffer, so that on a busy
// tunnel a message costs no goroutine hand-off at all, as on a plain TLS connection. A Read that
// finds the token taken waits for the holder to deliver. When nobody holds the token for a
// while (bgDelay), or a holder leaves for good, the connection's own reader goroutine (readLoop)
// takes it, so that PINGs, SETTINGS, new streams and a closed socket are always seen; it hands the
// token back as soon as it has delivered to a waiting Read. A holder blocked on the socket is
// interrupted with a past read deadline when its stream ends locally, only while it waits for a
// frame header (a bufio.Reader keeps a partial header across that).
//
// Writing: writers (a stream's Write, CloseWrite, Close, the handler's Accept) write their frames
// themselves under wmu, straight into the TLS connection: no writer goroutine. Frames a reader
// must send (SETTINGS and PING acknowledgements, RST_STREAM, WINDOW_UPDATE) go through a small
// queue that whoever holds wmu writes; readers only try the lock, so two peers that both write a
// lot can never deadlock on each other's full socket buffers.
//
// Lock order: wmu before mu. Stream fields marked "c.mu" are guarded by the connection's mu.
type h2conn struct {
	nc     net.Conn  // the TLS connection frames travel on (plain in protocol tests)
	raw    *corkConn // under the TLS connection, to turn one write session into one syscall; may be nil
	server bool
	flow   FlowConfig
	// maxStreams is the SETTINGS_MAX_CONCURRENT_STREAMS a server advertises.
	maxStreams uint32

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

	// The read token (see above), guarded by mu.
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

const (
	readBusy int32 = iota
	readWaitHeader
	readInterrupted
)

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

// ctrlFrame is a frame queued for whoever next holds the write lock.
type ctrlFrame struct {
	kind ctrlKind
	id   uint32
	val  uint32 // WINDOW_UPDATE increment, RST_STREAM and GOAWAY code, HEADERS status
	data [8]byte
}

type ctrlKind uint8

const (
	ctrlSettingsAck ctrlKind = iota
	ctrlPing
	ctrlPingAck
	ctrlWindowUpdate
	ctrlRST
	ctrlGoAway
	ctrlStatus    // a response HEADERS with END_STREAM, for requests refused on the reader goroutine
	ctrlEndStream // an empty DATA with END_STREAM, from a Close that found the write lock taken
)

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

// readLoop is the connection's own reader: it holds the read token whenever nobody else needs
// it (see h2conn) and returns when the connection ends.
func (c *h2conn) readLoop() {
	c.mu.Lock()
	for {
		for c.err == nil && (c.tHeld || c.bgIdle) {
			c.bgcond.Wait()
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		c.takeTokenLocked(nil, false)
		c.delivered, c.deliveredData = false, false
		err := c.readFramesLocked(func() bool { return c.delivered })
		// After handing data to a Read, let that Read read the socket next; after an end or
		// an error, read on at once: nobody else may come.
		c.releaseTokenLocked(c.deliveredData)
		if err != nil {
			c.mu.Unlock()
			c.readFailed(err)
			c.mu.Lock()
		}
	}
}

// bgWake lets readLoop take the token once it has stayed free for bgDelay. The timer is armed
// at most once per bgDelay, not at every release: a busy tunnel releases the token at every
// message.
func (c *h2conn) bgWake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bgArmed = false
	switch {
	case !c.bgIdle || c.tHeld || c.err != nil:
		// Someone reads; the next release that leaves the token free arms the timer again.
	case c.bgReleases != c.bgArmedAt:
		// Taken and released again meanwhile: give that release its own bgDelay.
		c.armBgLocked()
	default:
		c.bgIdle = false
		c.bgcond.Signal()
	}
}

func (c *h2conn) armBgLocked() {
	c.bgArmed = true
	c.bgArmedAt = c.bgReleases
	c.bgTimer.Reset(bgDelay)
}

// takeTokenLocked makes holder (nil for readLoop) the one goroutine that reads frames; reader is
// set when it is holder's Read, whose buffer it then fills directly.
func (c *h2conn) takeTokenLocked(holder *stream, reader bool) {
	c.tHeld, c.tHolder, c.tReader = true, holder, reader
}

// releaseTokenLocked gives the read token up and passes it on: to a waiting Read, else to waiting
// writers, else to readLoop, at once or, when soon is set (the holder got what it waited for
// and will likely be back), after bgDelay.
func (c *h2conn) releaseTokenLocked(soon bool) {
	c.tHeld, c.tHolder, c.tReader = false, nil, false
	c.passTokenLocked(soon)
}

// Invariant (tokenLostLocked): while the connection runs, the token is held, or readLoop may
// take it (bgIdle unset: it was signalled), or bgTimer is armed to let it. A waiter woken to take
// the token may find it no longer needs it; the armed timer is the backstop for that case, so
// the socket is never left unread.
func (c *h2conn) passTokenLocked(soon bool) {
	if c.tHeld || c.err != nil {
		return
	}
	switch {
	case len(c.tQueue) > 0:
		c.tQueue[0].rcond.Broadcast()
	case c.winWaiters > 0:
		c.wcond.Broadcast()
	case !soon:
		c.bgIdle = false
		c.bgcond.Signal()
		return
	default:
		c.bgIdle = true
	}
	if c.bgIdle {
		c.bgReleases++
		if !c.bgArmed {
			c.armBgLocked()
		}
	}
}

// tokenLostLocked reports a broken token invariant (see passTokenLocked): nobody holds the read
// token and nobody will take it.
func (c *h2conn) tokenLostLocked() bool {
	return c.err == nil && !c.tHeld && c.bgIdle && !c.bgArmed
}

// waitTurnLocked waits on s.rcond for the token holder to deliver to s, or for the token.
func (c *h2conn) waitTurnLocked(s *stream) {
	c.tQueue = append(c.tQueue, s)
	s.rcond.Wait()
	c.dequeueLocked(s)
	if !c.tHeld {
		// Woken to take the free token. If s does not need it after all, the next one must.
		c.passTokenLocked(true)
	}
}

func (c *h2conn) dequeueLocked(s *stream) bool {
	for i, x := range c.tQueue {
		if x == s {
			c.tQueue = append(c.tQueue[:i], c.tQueue[i+1:]...)
			return true
		}
	}
	return false
}

// wakeLocked hands what arrived for s (data, end of stream, an error, a response) to the Read or
// CONNECT waiting on it. It takes s out of the token queue at once, so that a holder releasing
// the token next does not pass it to a waiter that no longer needs it.
func (c *h2conn) wakeLocked(s *stream) {
	if c.dequeueLocked(s) || s.waitBuf != nil {
		c.delivered = true
	}
	s.rcond.Broadcast()
}

// interruptLocked wakes the token holder s from a socket read so that it sees its stream ended.
func (c *h2conn) interruptLocked(s *stream) {
	if c.tHeld && c.tHolder == s && c.tState.CompareAndSwap(readWaitHeader, readInterrupted) {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// readFramesLocked reads and handles frames as the token holder until done reports true. It is
// called, and returns, with c.mu held; done is checked with it held before each frame. It
// returns read and protocol errors; the caller, once it has released the token, passes them to
// readFailed.
func (c *h2conn) readFramesLocked(done func() bool) error {
	for c.err == nil && !done() {
		// A Read holding the token takes its own stream's next DATA straight into its buffer.
		c.direct, c.directBuf = nil, nil
		if h := c.tHolder; c.tReader && h.waitBuf != nil && h.recvLen == 0 && !h.filling {
			c.direct, c.directBuf = h, h.waitBuf
		}
		c.tState.Store(readWaitHeader)
		c.mu.Unlock()
		_, err := c.br.Peek(frameHeaderLen)
		if c.tState.Swap(readBusy) == readInterrupted {
			// The interrupter sets the deadline under mu: clearing it under mu too orders the
			// two, and no frame may be cut short.
			c.mu.Lock()
			c.nc.SetReadDeadline(time.Time{})
			c.mu.Unlock()
			if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
		} else if err == nil {
			err = c.readFrame()
		}
		c.mu.Lock()
		c.direct, c.directBuf = nil, nil
		if err != nil {
			return err
		}
		if c.ctrlOverflow {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	}
	return nil
}

// readFailed ends the connection after a read or protocol error.
func (c *h2conn) readFailed(err error) {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.fail(fmt.Errorf("hbone: protocol error: %w", err), http2.ErrCode(ce), true)
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.fail(fmt.Errorf("hbone: protocol error: %w", err), http2.ErrCodeFrameSize, true)
	default:
		c.fail(fmt.Errorf("%w: %w", errConnGone, err), http2.ErrCodeNo, false)
	}
}

// readFrame reads and handles one frame.
func (c *h2conn) readFrame() error {
	fh, err := c.fr.ReadFrameHeader()
	if err != nil {
		return err
	}
	c.framesRead.Add(1)
	if !c.sawSettings && (fh.Type != http2.FrameSettings || fh.Flags.Has(http2.FlagSettingsAck)) {
		// The peer's preface is a SETTINGS frame (RFC 9113 §3.4).
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if fh.Type == http2.FrameData {
		return c.readData(fh)
	}
	f, err := c.fr.ReadFrameForHeader(fh)
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			c.streamError(se.StreamID, se.Code)
			return nil
		}
		return err
	}
	return c.handleFrame(f)
}

func (c *h2conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.MetaHeadersFrame:
		if c.server {
			return c.serverHeaders(f)
		}
		return c.clientHeaders(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.mu.Lock()
			c.queueLocked(ctrlFrame{kind: ctrlPingAck, data: f.Data})
			c.mu.Unlock()
			c.flushCtrlAsync()
		}
		// An answer needs no bookkeeping: any frame read proves the peer alive (keepalive).
		return nil
	case *http2.RSTStreamFrame:
		return c.handleRST(f)
	case *http2.GoAwayFrame:
		c.handleGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		// We never enable push, and a client must not send it (RFC 9113 §8.4).
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		// PRIORITY, PRIORITY_UPDATE and unknown extension frames carry nothing for a tunnel.
		return nil
	}
}

func (c *h2conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = st.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize = st.Val
		case http2.SettingEnablePush:
			if !c.server && st.Val != 0 {
				return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 §6.5.2
			}
		case http2.SettingInitialWindowSize:
			// Applies to every open stream's send window, which may go negative (§6.9.2).
			delta := int64(st.Val) - int64(c.peerInitWindow)
			c.peerInitWindow = st.Val
			for _, s := range c.streams {
				s.sendWindow += delta
				if s.sendWindow > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		}
		return nil
	})
	if err == nil {
		c.queueLocked(ctrlFrame{kind: ctrlSettingsAck})
		c.wakeWritersLocked()
		if !c.sawSettings {
			c.sawSettings = true
			close(c.settingsc)
		}
	}
	c.mu.Unlock()
	c.flushCtrlAsync()
	return err
}

func (c *h2conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		c.wakeWritersLocked()
		over := c.sendWindow > maxWindow
		c.mu.Unlock()
		if over {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a stream that ended; the update may have crossed its end
	}
	s.sendWindow += int64(f.Increment)
	if s.sendWindow > maxWindow {
		c.resetLocked(s, http2.ErrCodeFlowControl, resetError{http2.ErrCodeFlowControl}, true)
	}
	c.wakeWritersLocked()
	c.mu.Unlock()
	c.flushCtrlAsync()
	return nil
}

// abortWritersLocked wakes writers waiting for window or for the write lock after a stream's
// write state or the connection's changed: each checks whether it can still write.
func (c *h2conn) abortWritersLocked() {
	c.wcond.Broadcast()
	if c.wmuWaiting.Load() > 0 {
		close(c.wabort)
		c.wabort = make(chan struct{})
	}
}

// wakeWritersLocked wakes writers waiting for window.
func (c *h2conn) wakeWritersLocked() {
	if c.winWaiters > 0 {
		c.delivered = true
	}
	c.wcond.Broadcast()
}

func (c *h2conn) handleRST(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.flushCtrlAsync() // the window of dropped unread bytes
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		if c.idleLocked(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	switch {
	case f.ErrCode == http2.ErrCodeNo && s.recvDone:
		// "Stop sending": the peer has said all it will say (RFC 9113 §8.1). What it said stays
		// readable; writes end.
		if s.werr == nil {
			s.werr = resetError{http2.ErrCodeNo}
		}
		s.reset = true
		c.abortWritersLocked()
		c.maybeCloseLocked(s)
	case f.ErrCode == http2.ErrCodeRefusedStream:
		c.resetLocked(s, f.ErrCode, fmt.Errorf("%w: %w", errConnUnusable, errRefused), false)
	default:
		c.resetLocked(s, f.ErrCode, resetError{f.ErrCode}, false)
	}
	return nil
}

func (c *h2conn) handleGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	for id, s := range c.streams {
		// Streams we opened past the peer's last processed one never reached it: safe to retry.
		if id > f.LastStreamID && c.ownLocked(id) {
			c.resetLocked(s, http2.ErrCodeRefusedStream, fmt.Errorf("%w: %w", errConnUnusable, errGoAway), false)
		}
	}
	idle := len(c.streams) == 0
	c.mu.Unlock()
	c.flushCtrlAsync()
	c.notifyGone()
	if idle {
		c.close()
	}
}

// streamError answers a stream-level protocol error with RST_STREAM and ends the stream here.
func (c *h2conn) streamError(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if c.server && id%2 == 1 && id > c.lastPeerID {
		c.lastPeerID = id // a malformed HEADERS still uses up its stream ID
	}
	if s := c.streams[id]; s != nil {
		c.resetLocked(s, code, fmt.Errorf("hbone: stream protocol error: %v", code), true)
	} else {
		c.queueLocked(ctrlFrame{kind: ctrlRST, id: id, val: uint32(code)})
	}
	c.mu.Unlock()
	c.flushCtrlAsync()
}

// idleLocked reports whether id names a stream that was never opened (RFC 9113 §5.1).
func (c *h2conn) idleLocked(id uint32) bool {
	if c.server {
		return id%2 == 0 || id > c.lastPeerID
	}
	return id%2 == 0 || id >= c.nextID
}

// recentlyClosedLocked reports whether stream id was open and closed lately.
func (c *h2conn) recentlyClosedLocked(id uint32) bool {
	return id != 0 && slices.Contains(c.recentClosed[:], id)
}

// ownLocked reports whether this end opened stream id.
func (c *h2conn) ownLocked(id uint32) bool { return !c.server && id%2 == 1 }

// readData reads one DATA frame's payload: straight into the buffer of a Read waiting on the
// stream when there is one, into the stream's chunks otherwise.
func (c *h2conn) readData(fh http2.FrameHeader) error {
	if fh.StreamID == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	size := int(fh.Length)
	body, pad := size, 0
	if fh.Flags.Has(http2.FlagDataPadded) {
		if size < 1 {
			return http2.ConnectionError(http2.ErrCodeFrameSize)
		}
		if _, err := io.ReadFull(c.br, c.scratch[:1]); err != nil {
			return err
		}
		pad = int(c.scratch[0])
		if 1+pad > size {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		body = size - 1 - pad
	}
	unread := body + pad // payload bytes still in the connection
	// The holder's own Read gets the payload before the checks, without taking the lock twice:
	// a Read may use all of its buffer as scratch space, so bytes that turn out not to be
	// deliverable are simply not reported.
	var pre []byte
	if c.direct != nil && c.direct.id == fh.StreamID && body > 0 {
		pre = c.directBuf[:min(body, len(c.directBuf))]
		if _, err := io.ReadFull(c.br, pre); err != nil {
			return err
		}
		unread -= len(pre)
	}
	c.mu.Lock()
	if int64(size) > c.recvWindow {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= int64(size)
	s := c.direct
	if s == nil || s.id != fh.StreamID || s.wireClosed {
		s = c.streams[fh.StreamID]
	}
	var rstCode http2.ErrCode
	deliver := false
	switch {
	case s == nil:
		if c.idleLocked(fh.StreamID) {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		// A stream that ended (we may have reset it while this was in flight): drop the data.
	case s.rerr != nil:
		// Ended here, not yet on the wire: drop.
	case s.recvDone:
		rstCode = http2.ErrCodeStreamClosed // DATA after END_STREAM
	case int64(size) > int64(s.recvWindow):
		rstCode = http2.ErrCodeFlowControl
	default:
		deliver = true
	}
	if !deliver {
		// The connection window still counts what is dropped; give it back at once.
		c.consumedLocked(nil, size)
		if rstCode != 0 {
			c.resetLocked(s, rstCode, fmt.Errorf("hbone: stream protocol error: %v", rstCode), true)
		}
		c.mu.Unlock()
		c.flushCtrlAsync()
		return c.discard(unread)
	}
	s.recvWindow -= int32(size)
	if size > body {
		c.consumedLocked(s, size-body) // padding counts against the window but reaches no one
	}
	var direct []byte
	switch {
	case pre != nil && s.waitBuf != nil && s.recvLen == 0:
		s.waitN = len(pre)
		s.waitBuf = nil
		c.deliveredData = true
		c.wakeLocked(s)
	case pre != nil:
		s.appendLocked(pre) // not reachable while the holder waits in Read; kept for safety
	case body > 0 && s.waitBuf != nil && s.recvLen == 0:
		// Another goroutine's Read waits: fill its buffer outside the lock.
		direct = s.waitBuf[:min(body, len(s.waitBuf))]
		s.waitBuf = nil
		s.filling = true
	}
	if unread == 0 && fh.Flags.Has(http2.FlagDataEndStream) && direct == nil {
		c.endRecvLocked(s)
		c.mu.Unlock()
		c.flushCtrlAsync()
		return nil
	}
	c.mu.Unlock()

	if len(direct) > 0 {
		_, err := io.ReadFull(c.br, direct)
		unread -= len(direct)
		c.mu.Lock()
		s.filling = false
		if err == nil {
			s.waitN = len(direct)
			c.deliveredData = true
		}
		c.wakeLocked(s)
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
	for rest := unread - pad; rest > 0; {
		m := min(rest, len(c.scratch))
		if _, err := io.ReadFull(c.br, c.scratch[:m]); err != nil {
			return err
		}
		rest -= m
		c.mu.Lock()
		if s.rerr != nil {
			c.consumedLocked(nil, m)
		} else {
			s.appendLocked(c.scratch[:m])
			if s.waitBuf != nil {
				c.deliveredData = true
				c.wakeLocked(s)
			}
		}
		c.mu.Unlock()
	}
	if pad > 0 {
		if err := c.discard(pad); err != nil {
			return err
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		c.mu.Lock()
		c.endRecvLocked(s)
		c.mu.Unlock()
	}
	c.flushCtrlAsync()
	return nil
}

// discard reads and drops n payload bytes.
func (c *h2conn) discard(n int) error {
	for n > 0 {
		m := min(n, len(c.scratch))
		if _, err := io.ReadFull(c.br, c.scratch[:m]); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

// endRecvLocked records the peer's END_STREAM.
func (c *h2conn) endRecvLocked(s *stream) {
	if s.recvDone {
		return
	}
	s.recvDone = true
	c.wakeLocked(s)
	c.maybeCloseLocked(s)
}

// consumedLocked returns n received bytes to the peer's send windows: the connection's, and the
// stream's when s is not nil. A WINDOW_UPDATE goes out once half the window has been consumed,
// so a steady stream costs one every few MiB, or sooner once what was consumed reaches what the
// peer may still send (x/net's rule): when slow readers hold most of the connection window
// unread, the streams that do read must not wait for half of it.
func (c *h2conn) consumedLocked(s *stream, n int) {
	c.recvUnacked += int64(n)
	if refreshWindow(c.recvUnacked, c.recvWindow, int64(c.flow.connWindow())) {
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, val: uint32(c.recvUnacked)})
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
	}
	if s == nil || s.recvDone || s.rerr != nil {
		return
	}
	s.recvUnacked += int32(n)
	if refreshWindow(int64(s.recvUnacked), int64(s.recvWindow), int64(c.flow.streamWindow())) {
		c.queueLocked(ctrlFrame{kind: ctrlWindowUpdate, id: s.id, val: uint32(s.recvUnacked)})
		s.recvWindow += s.recvUnacked
		s.recvUnacked = 0
	}
}

// minRefresh is the least WINDOW_UPDATE increment sent while the peer still has that much window.
const minRefresh = 16 << 10

// refreshWindow reports whether to return unacked consumed bytes of a window of size window, of
// which the peer may still send remaining.
func refreshWindow(unacked, remaining, window int64) bool {
	switch {
	case unacked <= 0:
		return false
	case unacked >= window/2:
		return true
	default:
		return unacked >= remaining && (unacked >= minRefresh || remaining < minRefresh)
	}
}

// resetLocked ends s both ways now, with err for its local reads and writes, and sends
// RST_STREAM code when send is set.
func (c *h2conn) resetLocked(s *stream, code http2.ErrCode, err error, send bool) {
	if send && !s.wireClosed {
		c.queueLocked(ctrlFrame{kind: ctrlRST, id: s.id, val: uint32(code)})
	}
	s.failLocked(err)
	s.reset = true
	c.abortWritersLocked()
	c.maybeCloseLocked(s)
}

// maybeCloseLocked retires s once it is closed on the wire: both ends sent END_STREAM, or it was
// reset.
func (c *h2conn) maybeCloseLocked(s *stream) {
	if s.wireClosed || !(s.reset || (s.sendEnded && s.recvDone)) {
		return
	}
	s.wireClosed = true
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	c.recentClosed[c.recentNext%uint32(len(c.recentClosed))] = s.id
	c.recentNext++
	if c.server && !s.handlerRunning {
		c.handlers--
	}
	if s.cancel != nil {
		s.cancel()
	}
	if (c.goAwaySent || c.goAwayRecv) && len(c.streams) == 0 && c.err == nil {
		go c.closeGracefully()
	}
}

// queueLocked queues a frame for the next holder of the write lock; callers call flushCtrl after
// unlocking c.mu.
//
// The queue is bounded: a peer that floods frames needing an answer (PING, SETTINGS, frames
// answered with RST_STREAM) while the write lock is held, e.g. by a write blocked on a peer that
// does not read, would otherwise grow it without bound. Past maxCtrlQueue the connection fails
// with ENHANCE_YOUR_CALM (as x/net's server does); the token holder sees ctrlOverflow after the
// frame that caused it.
func (c *h2conn) queueLocked(f ctrlFrame) {
	if c.err != nil {
		return
	}
	if n := len(c.ctrl); f.kind == ctrlWindowUpdate && n > 0 {
		if last := &c.ctrl[n-1]; last.kind == ctrlWindowUpdate && last.id == f.id {
			last.val += f.val // both within one window: no overflow
			return
		}
	}
	if len(c.ctrl) >= maxCtrlQueue {
		c.ctrlOverflow = true
		return
	}
	c.ctrl = append(c.ctrl, f)
	c.ctrlPending.Store(true)
}

// flushCtrl writes queued frames unless another goroutine holds the write lock, in which case
// that one writes them before letting go (see endWrite).
func (c *h2conn) flushCtrl() {
	for c.ctrlPending.Load() {
		if !c.tryLockWrite() {
			return
		}
		if err := c.endWrite(nil); err != nil {
			return
		}
	}
}

// flushCtrlAsync is flushCtrl for the read token holder, which must never block on a socket
// write: under bulk traffic both ways, the peer's reader may itself be blocked writing to us,
// waiting for us to read, and two readers stuck writing control frames would stall the
// connection until the write timeout. When the write lock is free, a goroutine takes it over
// and writes the queued frames, and the holder reads on. (Other writers write the queue at
// their endWrite.) Control frames that need an answer are rare, so is the goroutine.
func (c *h2conn) flushCtrlAsync() {
	if c.ctrlPending.Load() && c.tryLockWrite() {
		go c.endWrite(nil)
	}
}

// beginWrite takes the write lock. With cork set, the frames written until endWrite leave in one
// socket write; without, each TLS record goes out as it is written (for a session of one small
// frame, which saves copying it once more).
func (c *h2conn) beginWrite(cork bool) {
	c.wmu.Lock()
	c.startWriteLocked(cork)
}

// tryLockWrite takes the write lock if it is free, for beginWrite's work without waiting.
func (c *h2conn) tryLockWrite() bool {
	if !c.wmu.TryLock() {
		return false
	}
	c.startWriteLocked(false)
	return true
}

// unlockWrite releases the write lock and wakes the writers waiting for it in lockStreamWrite.
func (c *h2conn) unlockWrite() {
	c.wstart.Store(0)
	c.wmu.Unlock()
	if c.wmuWaiting.Load() > 0 {
		c.mu.Lock()
		c.abortWritersLocked()
		c.mu.Unlock()
	}
}

// lockStreamWrite is beginWrite for frames of s (DATA, its END_STREAM when end is set, or its
// response HEADERS): it gives up, returning why, when s can no longer send (deadline, Close,
// reset) or the connection ends while it waits behind another writer, which may be blocked on a
// peer that does not read.
func (c *h2conn) lockStreamWrite(s *stream, cork, end bool) error {
	if c.wmu.TryLock() { // the common case, without the closure below
		c.startWriteLocked(cork)
		return nil
	}
	return c.lockWriteUnless(cork, func() error { return s.sendErrLocked(end) }, nil)
}

// lockWriteUnless is beginWrite for a writer that may give up: while it waits for the write
// lock, stop (called under mu) returning an error, the connection ending, or done closing ends
// the wait with that error (for done, stop's). abortWritersLocked wakes it to check.
func (c *h2conn) lockWriteUnless(cork bool, stop func() error, done <-chan struct{}) error {
	for !c.wmu.TryLock() {
		c.mu.Lock()
		err := stop()
		if err == nil && c.err != nil {
			err = c.err
		}
		if err != nil {
			c.mu.Unlock()
			return err
		}
		c.wmuWaiting.Add(1)
		wake := c.wabort
		c.mu.Unlock()
		// Released between the TryLock and the registration: its wake-up came too early.
		if c.wmu.TryLock() {
			c.mu.Lock()
			c.wmuWaiting.Add(-1)
			c.mu.Unlock()
			break
		}
		select {
		case <-wake:
		case <-done:
		}
		c.mu.Lock()
		c.wmuWaiting.Add(-1)
		c.mu.Unlock()
	}
	c.startWriteLocked(cork)
	return nil
}

// startWriteLocked starts a write session under wmu: corked as asked or when control frames
// wait, and watched, so that a peer that stops reading cannot hold the write lock, and with it
// every stream's writes and Close, for ever: a write session that does not end within
// PingTimeout ends the connection, as an unanswered PING does.
//
// The watchdog is a timer rather than the socket's write deadline. A deadline would stay set
// between writes, and the TLS stack writes on its own from the reading side (its answer to the
// peer's KeyUpdate): after an idle spell longer than the deadline that write would fail and take
// the connection down. The timer is re-armed only when less than half of PingTimeout is left,
// which saves a timer update per write; when it fires during a younger session it re-arms for
// that session's end.
func (c *h2conn) startWriteLocked(cork bool) {
	c.setCorkLocked(cork || c.ctrlPending.Load())
	if d := int64(c.flow.PingTimeout); d > 0 {
		now := int64(time.Since(c.epoch)) + 1
		c.wstart.Store(now)
		if now+d/2 > c.wdogAt.Load() {
			c.wdogMu.Lock()
			if now+d/2 > c.wdogAt.Load() {
				c.wdogAt.Store(now + d)
				c.wdog.Reset(time.Duration(d))
			}
			c.wdogMu.Unlock()
		}
	}
}

// writeWatchdog runs when the write watchdog fires: it ends the connection if the write session
// in progress began PingTimeout ago or earlier, and re-arms for a younger one.
func (c *h2conn) writeWatchdog() {
	d := int64(c.flow.PingTimeout)
	c.wdogMu.Lock()
	// Disarmed before wstart is read: a session that stores its start after this read finds
	// wdogAt 0 and arms the timer itself (both are sequentially consistent atomics).
	c.wdogAt.Store(0)
	start := c.wstart.Load()
	now := int64(time.Since(c.epoch)) + 1
	if start == 0 || now-start < d {
		if start != 0 {
			c.wdogAt.Store(start + d)
			c.wdog.Reset(time.Duration(start + d - now))
		}
		c.wdogMu.Unlock()
		return
	}
	c.wdogMu.Unlock()
	c.fail(errWriteTimeout, http2.ErrCodeNo, false)
}

func (c *h2conn) setCorkLocked(cork bool) {
	if cork && !c.corked && c.raw != nil {
		c.raw.cork()
		c.corked = true
	}
}

// endWrite writes queued control frames, flushes and releases the write lock. A write error ends
// the connection: a frame may have been cut in half.
func (c *h2conn) endWrite(err error) error {
	if err == nil && c.ctrlPending.Load() {
		c.setCorkLocked(true)
		err = c.writeCtrlLocked()
	}
	if c.corked {
		c.corked = false
		if ferr := c.raw.uncork(); err == nil {
			err = ferr
		}
	}
	c.unlockWrite()
	if err != nil {
		c.fail(fmt.Errorf("%w: write: %w", errConnGone, err), http2.ErrCodeNo, false)
		if cerr := c.closedErr(); cerr != nil {
			return cerr
		}
		return err
	}
	c.flushCtrl()
	return nil
}

// writeCtrlLocked writes the queued control frames. Called with wmu held.
func (c *h2conn) writeCtrlLocked() error {
	if !c.ctrlPending.Load() {
		return nil
	}
	c.mu.Lock()
	c.ctrlPending.Store(false)
	frames := c.ctrl
	c.ctrl = c.ctrlSpare[:0]
	c.mu.Unlock()
	err := c.writeFramesLocked(frames)
	c.ctrlSpare = frames[:0]
	return err
}

// writeFramesLocked writes control frames. Called with wmu held.
func (c *h2conn) writeFramesLocked(frames []ctrlFrame) error {
	var err error
	for _, f := range frames {
		switch f.kind {
		case ctrlSettingsAck:
			err = c.fr.WriteSettingsAck()
		case ctrlPing:
			err = c.fr.WritePing(false, f.data)
		case ctrlPingAck:
			err = c.fr.WritePing(true, f.data)
		case ctrlWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.id, f.val)
		case ctrlRST:
			err = c.fr.WriteRSTStream(f.id, http2.ErrCode(f.val))
		case ctrlGoAway:
			err = c.fr.WriteGoAway(f.id, http2.ErrCode(f.val), nil)
		case ctrlStatus:
			err = c.writeHeadersLocked(f.id, []hpack.HeaderField{statusField(int(f.val))}, true)
		case ctrlEndStream:
			err = c.fr.WriteData(f.id, true, nil)
		}
		if err != nil {
			break
		}
	}
	return err
}

// writeHeadersLocked encodes fields and writes them as HEADERS and, past the peer's frame size,
// CONTINUATION frames. Called with wmu held: the hpack encoder's state is the connection's.
func (c *h2conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, endStream bool) error {
	c.mu.Lock()
	limit, maxFrame := c.peerTableSize, int(c.peerMaxFrame)
	c.mu.Unlock()
	if limit != c.encLimit {
		c.henc.SetMaxDynamicTableSizeLimit(limit)
		c.encLimit = limit
	}
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	first := min(len(block), maxFrame)
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: block[:first],
		EndStream:     endStream,
		EndHeaders:    first == len(block),
	})
	for block = block[first:]; err == nil && len(block) > 0; {
		n := min(len(block), maxFrame)
		err = c.fr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
	return err
}

// writeData writes p as DATA frames of s of at most maxFrame bytes. The caller has taken the
// flow-control window for p. When s can no longer send DATA by the time this holds the write
// lock (closed, reset or ended meanwhile: nothing may follow END_STREAM or RST_STREAM, RFC 9113
// §5.1), or gives up waiting for it (a deadline, Close), nothing is written and the connection
// window goes back.
func (c *h2conn) writeData(s *stream, p []byte, maxFrame int) error {
	err := c.lockStreamWrite(s, len(p) > recordData, false)
	if err == nil {
		c.mu.Lock()
		err = s.sendErrLocked(false)
		c.mu.Unlock()
		if err != nil {
			c.endWrite(nil)
		}
	}
	if err != nil {
		c.mu.Lock()
		c.sendWindow += int64(len(p))
		c.wcond.Broadcast()
		c.mu.Unlock()
		return err
	}
	for {
		n := min(len(p), maxFrame)
		last := n == len(p)
		if n <= recordData {
			err = c.fr.WriteData(s.id, false, p[:n])
		} else {
			// A frame that spans TLS records anyway: its header goes as a record of its own and
			// the payload straight from p, not copied into the Framer's buffer first. Corked,
			// both still leave in one socket write.
			err = c.writeDataHeader(s.id, n, false)
			if err == nil {
				_, err = c.nc.Write(p[:n])
			}
		}
		if err != nil || last {
			break
		}
		p = p[n:]
	}
	return c.endWrite(err)
}

// writeEnd sends s's END_STREAM, an empty DATA frame. With wait unset (Close) it does not wait
// for the write lock: when another writer holds it, perhaps blocked on a peer that does not
// read, the frame is queued for that writer to send after its own frames.
func (c *h2conn) writeEnd(s *stream, wait bool) error {
	if wait {
		if err := c.lockStreamWrite(s, false, true); err != nil {
			return err
		}
	} else if !c.tryLockWrite() {
		c.mu.Lock()
		if s.sendErrLocked(true) == nil {
			s.sendEnded = true
			c.queueLocked(ctrlFrame{kind: ctrlEndStream, id: s.id})
			c.maybeCloseLocked(s)
		}
		c.mu.Unlock()
		c.flushCtrl() // the holder may have let go meanwhile
		return nil
	}
	c.mu.Lock()
	err := s.sendErrLocked(true)
	// Set before the write lock is released, so that no DATA of a Write can follow.
	s.sendEnded = err == nil
	c.mu.Unlock()
	if err != nil {
		c.endWrite(nil)
		return err
	}
	err = c.endWrite(c.fr.WriteData(s.id, true, nil))
	c.mu.Lock()
	c.maybeCloseLocked(s)
	c.mu.Unlock()
	return err
}

// writeDataHeader writes the 9-byte header of a DATA frame of n payload bytes (RFC 9113 §4.1,
// §6.1), for a payload written next. Called with wmu held.
func (c *h2conn) writeDataHeader(id uint32, n int, end bool) error {
	var flags http2.Flags
	if end {
		flags = http2.FlagDataEndStream
	}
	h := &c.dataHeader
	h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
	h[3], h[4] = byte(http2.FrameData), byte(flags)
	h[5], h[6], h[7], h[8] = byte(id>>24&0x7f), byte(id>>16), byte(id>>8), byte(id)
	_, err := c.nc.Write(h[:])
	return err
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

// corkConn sits under the TLS connection. While corked it collects what TLS writes, so that the
// records of one write session (several frames, or a DATA frame bigger than a record) leave in
// one syscall instead of one per record. Uncorked, a write goes straight through without a lock.
type corkConn struct {
	net.Conn
	state atomic.Int32 // corkOpen, corkCorked, corkFlushing; changed under mu
	mu    sync.Mutex
	buf   []byte
}

const (
	corkOpen int32 = iota
	corkCorked
	corkFlushing
)

// Write is called by TLS with its output lock held, so records arrive in order. One written
// while a flush is under way (a TLS alert from the reading side) waits for the flush.
func (c *corkConn) Write(p []byte) (int, error) {
	if c.state.Load() == corkOpen {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == corkCorked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.state.Store(corkCorked)
	c.mu.Unlock()
}

func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Store(corkFlushing)
	var err error
	if len(c.buf) > 0 {
		_, err = c.Conn.Write(c.buf)
	}
	if cap(c.buf) > 256<<10 {
		c.buf = nil // a burst of control frames must not pin a large buffer
	} else {
		c.buf = c.buf[:0]
	}
	c.state.Store(corkOpen)
	return err
}
