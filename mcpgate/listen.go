package mcpgate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a LimitedListener's limits.
const (
	DefaultMaxConnections           = 4096
	DefaultMaxConnectionsPerAddress = 1024
)

// ListenerLimits are the bounds of a LimitedListener.
type ListenerLimits struct {
	// MaxConnections bounds the connections open at once, so that a
	// flood of them can't take every file descriptor of the process and
	// with them its upstream pipes, its database and its log; 0 means
	// DefaultMaxConnections.
	MaxConnections int
	// MaxConnectionsPerAddress bounds the connections open at once from
	// one client address, so that one client can't take every place; 0
	// means DefaultMaxConnectionsPerAddress, or MaxConnections if that is
	// lower. An IPv6 client is counted by its /64, the block one host is
	// usually given: it could otherwise come from as many addresses as
	// it likes. Behind a proxy or load balancer every connection comes
	// from its address: set this to MaxConnections there.
	MaxConnectionsPerAddress int
	// Log receives a line when connections are refused — the first, then
	// at most one every 10 seconds, with the count; nil means
	// slog.Default().
	Log *slog.Logger
}

// A LimitedListener is a net.Listener for an HTTP server that holds at
// most so many connections open, overall and from one client address.
// A connection beyond either bound is refused at once, so that one
// client, or a flood of idle connections, can't exhaust the process's
// file descriptors and lock the other clients out; Accept never waits
// for a place, so the clients under their bounds are still served.
//
// A refused client that sends a request is answered 429 (its address is
// at its bound) or 503 (the listener is full), with Retry-After and a
// reason; at most 64 refusals are answered at once, each within 2
// seconds, and past that a refused connection is just closed. The answer
// is plain HTTP/1.1: under TLS, put the LimitedListener beneath
// tls.NewListener, and a refused client sees a failed handshake, no worse
// than a closed connection.
//
// A connection's place is freed when it is closed (the first Close).
// Refusals being answered hold at most 64 connections more.
type LimitedListener struct {
	inner      net.Listener
	max, per   int
	log        *slog.Logger
	tooMany    []byte // the answer to a client over its address's bound
	full       []byte // the answer when the listener is full
	refusing   atomic.Int32
	mu         sync.Mutex
	open       int                  // connections open
	byAddr     map[netip.Prefix]int // connections open, by client address
	refused    int                  // since the last log line
	lastLogged time.Time
	lastFrom   netip.Prefix
}

var _ net.Listener = (*LimitedListener)(nil)

// Refused connections are answered by at most maxRefusing goroutines at
// once, each within refusalTime: answering costs a goroutine and a file
// descriptor for that long, and a flood must not turn that into another
// way to exhaust them.
const (
	maxRefusing    = 64
	refusalTime    = 2 * time.Second
	refusalLogGap  = 10 * time.Second
	refusalHeaders = 16 << 10 // the most of a refused request read before answering
)

// LimitListener returns ln with its connections bounded by limits. It
// fails, and leaves ln open, if a limit is negative or the bound per
// address is above the overall one.
func LimitListener(ln net.Listener, limits ListenerLimits) (*LimitedListener, error) {
	max, per := limits.MaxConnections, limits.MaxConnectionsPerAddress
	switch {
	case max < 0:
		return nil, fmt.Errorf("mcpgate: MaxConnections is %d, negative", max)
	case per < 0:
		return nil, fmt.Errorf("mcpgate: MaxConnectionsPerAddress is %d, negative", per)
	case max == 0:
		max = DefaultMaxConnections
	}
	switch {
	case per == 0:
		per = min(DefaultMaxConnectionsPerAddress, max)
	case per > max:
		return nil, fmt.Errorf("mcpgate: MaxConnectionsPerAddress (%d) is more than MaxConnections (%d)", per, max)
	}
	l := &LimitedListener{inner: ln, max: max, per: per, log: limits.Log, byAddr: map[netip.Prefix]int{},
		tooMany: refusal(429, "Too Many Requests", fmt.Sprintf("agentsec: too many connections from your address (the most is %d); close idle ones, or retry later", per)),
		full:    refusal(503, "Service Unavailable", fmt.Sprintf("agentsec: the gateway has %d connections open, its limit; retry later", max)),
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	return l, nil
}

// refusal is a complete HTTP/1.1 answer that closes the connection.
func refusal(code int, status, reason string) []byte {
	body := reason + "\n"
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, status, len(body), body)
}

// Accept waits for the next connection within the limits, refusing
// those beyond them on the way.
func (l *LimitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		key := addressKey(c.RemoteAddr())
		answer := l.take(key)
		if answer == nil {
			return &limitedConn{Conn: c, l: l, key: key}, nil
		}
		l.refuse(c, answer, key)
	}
}

// Close closes the listener. Connections it accepted stay open.
func (l *LimitedListener) Close() error { return l.inner.Close() }

// Addr returns the listener's address.
func (l *LimitedListener) Addr() net.Addr { return l.inner.Addr() }

// take counts a new connection from key, or returns the answer that
// refuses it.
func (l *LimitedListener) take(key netip.Prefix) []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.byAddr[key] >= l.per:
		return l.tooMany
	case l.open >= l.max:
		return l.full
	}
	l.open++
	l.byAddr[key]++
	return nil
}

func (l *LimitedListener) release(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byAddr[key]--; l.byAddr[key] <= 0 {
		delete(l.byAddr, key)
	}
}

// refuse answers a refused connection on a goroutine of its own, if
// fewer than maxRefusing are busy, and closes it.
func (l *LimitedListener) refuse(c net.Conn, answer []byte, key netip.Prefix) {
	l.logRefusal(key)
	if l.refusing.Add(1) > maxRefusing {
		l.refusing.Add(-1)
		c.Close()
		return
	}
	go func() {
		defer l.refusing.Add(-1)
		defer c.Close()
		c.SetDeadline(time.Now().Add(refusalTime))
		// Answer only a request: an HTTP client takes bytes that come
		// before its request was sent for a broken connection, not for
		// an answer.
		if !readHeaders(c) {
			return
		}
		if _, err := c.Write(answer); err != nil {
			return
		}
		// Closing with unread data would reset the connection, and the
		// reset can destroy the answer before the client reads it: end
		// our side, then read until the client closes its own.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}

// readHeaders reads a request's headers, up to the blank line after
// them, reporting whether it found it.
func readHeaders(c net.Conn) bool {
	br := bufio.NewReaderSize(io.LimitReader(c, refusalHeaders), 4096)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: skip the rest of it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil {
				return false
			}
			continue
		}
		if err != nil {
			return false
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return true
		}
	}
}

// logRefusal says that connections are refused: at once the first time,
// then at most once every refusalLogGap, with the count since.
func (l *LimitedListener) logRefusal(key netip.Prefix) {
	l.mu.Lock()
	l.refused++
	l.lastFrom = key
	if time.Since(l.lastLogged) < refusalLogGap {
		l.mu.Unlock()
		return
	}
	n, from, open := l.refused, l.lastFrom, l.open
	l.refused, l.lastLogged = 0, time.Now()
	l.mu.Unlock()
	l.log.Warn("agentsec: refusing connections beyond the limits", "refused", n, "last_from", from,
		"open", open, "max_connections", l.max, "max_connections_per_address", l.per)
}

// addressKey is what a connection's client is counted by: its IPv4
// address, or its IPv6 address's /64. Addresses that are not IP (a Unix
// socket's) share one key.
func addressKey(a net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap().WithZone("")
	switch {
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	case ip.Is6():
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.Prefix{}
}

// A limitedConn holds its place in its listener until it is closed.
type limitedConn struct {
	net.Conn
	l        *LimitedListener
	key      netip.Prefix
	released atomic.Bool
}

// Close closes the connection and frees its place, once however often
// and from however many goroutines it is called.
func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	if c.released.CompareAndSwap(false, true) {
		c.l.release(c.key)
	}
	return err
}

// CloseWrite closes the sending side of a TCP connection. net/http uses
// it, where the connection has it, to end a response without resetting a
// connection whose request it did not read whole.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
