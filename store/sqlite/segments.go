package sqlite

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/regularfile"
)

// The record log makes an append durable with one fdatasync of a file
// that is overwritten, not extended: SQLite's own commits then need no
// sync of their own (see docs/design.md, "The record log").
//
// Its segments are files <db>-segments/NNNNNN.seg of about segmentSize
// bytes. Appends fill one segment, then move to another whose records
// SQLite holds durably, or to a new one. A segment's file is allocated
// ahead of the frames written into it, by a background goroutine that
// writes zeros and syncs them, so that the sync of an append writes only
// data: a sync after a file grows also writes the file's new size, and on
// this kind of disk costs half as much again.

// segmentSize is how far a segment is filled before appends move to
// another; a batch larger than a whole segment still goes into one.
// Tests make it smaller.
var segmentSize int64 = 8 << 20

const (
	// firstChunk and maxChunk bound how far ahead of its frames a
	// segment is allocated: a new segment starts small, so that a store
	// that is opened and used little writes little.
	firstChunk = 64 << 10
	maxChunk   = 1 << 20
)

// segmentsDir is the directory of the record log of the database at path.
func segmentsDir(path string) string { return path + "-segments" }

// A segment is one file of the record log.
type segment struct {
	num int
	f   *os.File
	// last is the largest record seq written to it since its header, or
	// for a checkpoint the seq of the record after it; -1 if none. The
	// segment may be reused once the database holds record last durably.
	last atomic.Int64
	// allocated is how far the file is written and synced, zeros or
	// frames. It grows only under extendMu, which whoever writes past it
	// holds: the allocator, or an append that outruns it.
	allocated atomic.Int64
	extendMu  sync.Mutex
}

// recordLog is a store's record log. Its appends are serialized by the
// Store's appendMu; mu guards the segment list, which the allocator and
// the checkpointer see too.
type recordLog struct {
	dir     string
	mu      sync.Mutex
	segs    []*segment
	active  *segment
	off     int64  // where the next frame goes in active
	prev    uint32 // the crc the next frame continues
	buf     []byte
	durable atomic.Uint64 // records below this seq are on stable storage in SQLite
	growing atomic.Bool   // a goroutine is allocating the active segment ahead
	// syncTook is how long a write and its sync take, in nanoseconds: a
	// moving average of the appends', for GatherAppends.
	syncTook atomic.Int64
	wg       sync.WaitGroup
	// failed is set once a write or sync failed: what reached the disk
	// is unknown, so the log takes no more appends (see Store.Append).
	failed error
}

// openRecordLog opens or creates the record log in dir and returns it
// with every frame its segments hold, records in seq order. The caller
// replays what the database lacks, makes the database durable, and then
// calls restart.
func openRecordLog(dir string) (*recordLog, []frame, error) {
	if err := makeDir(dir); err != nil {
		return nil, nil, fmt.Errorf("sqlite: record log: %w", err)
	}
	l := &recordLog{dir: dir}
	frames, err := l.load(os.O_RDWR)
	if err != nil {
		l.close()
		return nil, nil, err
	}
	return l, frames, nil
}

// makeDir makes dir, if it is missing, so that it outlives a crash: its
// entry in its parent is synced too.
func makeDir(dir string) error {
	switch err := os.Mkdir(dir, 0o700); {
	case errors.Is(err, os.ErrExist):
		return nil
	case err != nil:
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// readSegments returns the frames of the record log in dir, records in
// seq order, without opening it for writing. A missing dir has none.
func readSegments(dir string) ([]frame, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	l := &recordLog{dir: dir}
	defer l.close()
	return l.load(os.O_RDONLY)
}

// load opens the segments in l.dir with flag and reads their frames.
func (l *recordLog) load(flag int) ([]frame, error) {
	names, err := filepath.Glob(filepath.Join(l.dir, "*.seg"))
	if err != nil {
		return nil, fmt.Errorf("sqlite: record log: %w", err)
	}
	var frames []frame
	for _, name := range names {
		num, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(name), ".seg"))
		if err != nil || num < 0 || num > maxSegmentNumber || filepath.Base(name) != segmentName(num) {
			continue // not ours
		}
		f, err := openSegment(name, flag)
		if err != nil {
			return nil, err
		}
		seg := &segment{num: num, f: f}
		seg.last.Store(-1)
		l.segs = append(l.segs, seg)
		data, err := io.ReadAll(f)
		if err != nil {
			return nil, fmt.Errorf("sqlite: record log: reading %s: %w", name, err)
		}
		seg.allocated.Store(int64(len(data)))
		found := scanSegment(data)
		for _, f := range found {
			// A checkpoint's size is at most the next record's seq.
			seg.last.Store(max(seg.last.Load(), int64(min(f.seq, math.MaxInt64))))
		}
		frames = append(frames, found...)
	}
	slices.SortFunc(l.segs, func(a, b *segment) int { return a.num - b.num })
	slices.SortStableFunc(frames, func(a, b frame) int {
		if a.kind != b.kind {
			return int(a.kind) - int(b.kind)
		}
		return cmp.Compare(a.seq, b.seq)
	})
	// A record is written once: segments are reused under a new salt,
	// which ends their old chains. The same record twice with other bytes
	// was forged; which copy is genuine only verification can tell.
	for i := 1; i < len(frames); i++ {
		a, b := frames[i-1], frames[i]
		if a.kind == frameRecord && b.kind == frameRecord && a.seq == b.seq &&
			(!bytes.Equal(a.data, b.data) || !bytes.Equal(a.hashes, b.hashes)) {
			return nil, fmt.Errorf("sqlite: the record log in %s holds record %d twice, with different bytes: %w; run agentsec audit verify", l.dir, a.seq, errWrittenByAnother)
		}
	}
	return frames, nil
}

// maxSegmentNumber bounds the record log's segment numbers: far more
// than a log needs (each holds segmentSize), and far from overflowing.
const maxSegmentNumber = 1 << 30

// segmentName is the file name of segment num.
func segmentName(num int) string { return fmt.Sprintf("%06d.seg", num) }

// maxSegmentBytes is the most a segment file holds: segmentSize, the
// allocator's last chunk past it, and one batch of the largest records,
// which may overrun it when it is a segment's first.
func maxSegmentBytes() int64 {
	return segmentSize + maxChunk + audit.MaxBatch*(frameHeader+maxFrameBody)
}

// openSegment opens an existing segment file with flag. Anything but a
// regular file of at most maxSegmentBytes is refused, naming it: a
// symlink would have the gateway write where it points, a FIFO would
// block its reads, and a huge file would be read into memory whole.
func openSegment(name string, flag int) (*os.File, error) {
	f, _, err := regularfile.Open(name, flag|segmentOpenFlags, maxSegmentBytes())
	var tooLarge *regularfile.TooLargeError
	switch {
	case errors.As(err, &tooLarge):
		return nil, fmt.Errorf("sqlite: record log: %s holds %d bytes, more than a segment can (%d)", name, tooLarge.Size, tooLarge.Max)
	case err != nil:
		return nil, fmt.Errorf("sqlite: record log: %w (a segment must be a regular file, not a link)", err)
	}
	return f, nil
}

// scanSegment returns the frames of a segment's bytes, copied, up to the
// first that does not continue the chain. A segment whose header is
// damaged has none: its header is written only when the segment is
// reused, after SQLite holds its old records durably.
func scanSegment(data []byte) []frame {
	prev, err := readHeader(data)
	if err != nil {
		return nil
	}
	var out []frame
	for off := segmentHeader; ; {
		f, n, crc, err := readFrame(data[off:], prev)
		if err != nil {
			return out
		}
		f.data, f.hashes = slices.Clone(f.data), slices.Clone(f.hashes)
		out = append(out, f)
		off, prev = off+n, crc
	}
}

// restart starts appending in the first segment whose records are all
// below durable, the records durable in the database, or in a new one.
func (l *recordLog) restart(durable uint64) error {
	l.durable.Store(durable)
	l.active = nil
	return l.next()
}

// begin makes seg the active segment, with a new header: none of its old
// frames continues the new salt's chain. The header reaches the disk
// with the first append's sync.
func (l *recordLog) begin(seg *segment) error {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	salt := binary.LittleEndian.Uint32(b[:])
	seg.last.Store(-1)
	seg.extendMu.Lock()
	_, err := seg.f.WriteAt(appendHeader(nil, salt), 0)
	seg.allocated.Store(max(seg.allocated.Load(), segmentHeader))
	seg.extendMu.Unlock()
	if err != nil {
		return fmt.Errorf("sqlite: record log: %w", err)
	}
	l.active, l.off, l.prev = seg, segmentHeader, salt
	testHook("segment")
	l.growAhead()
	return nil
}

// create makes segment file num, empty but for a header, and syncs the
// directory, so that the file outlives a crash.
func (l *recordLog) create(num int) (*segment, error) {
	if num > maxSegmentNumber {
		return nil, fmt.Errorf("sqlite: record log: segment %d would pass the last number (%d)", num, maxSegmentNumber)
	}
	name := filepath.Join(l.dir, segmentName(num))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: record log: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("sqlite: record log: %w", err)
	}
	seg := &segment{num: num, f: f}
	seg.last.Store(-1)
	return seg, nil
}

// append writes the frames of entries to the log and syncs it. On an
// error the log is failed: a failed write or sync leaves the file's state
// unknown.
func (l *recordLog) append(frames func(dst []byte, prev uint32) ([]byte, uint32, int64)) error {
	if l.failed != nil {
		return l.failed
	}
	buf, crc, last := frames(l.buf[:0], l.prev)
	if l.off+int64(len(buf)) > segmentSize && l.off > segmentHeader {
		if err := l.next(); err != nil {
			return l.fail(err)
		}
		buf, crc, last = frames(buf[:0], l.prev)
	}
	seg := l.active
	end := l.off + int64(len(buf))
	// Within what is allocated the allocator never writes: only an append
	// that goes past it waits for the allocator, and keeps it out.
	grows := end > seg.allocated.Load()
	if grows {
		seg.extendMu.Lock()
		if grows = end > seg.allocated.Load(); !grows {
			seg.extendMu.Unlock()
		}
	}
	testHook("writing")
	began := time.Now()
	err := writeSynced(seg.f, buf, l.off)
	took := time.Since(began)
	if grows {
		if err == nil {
			seg.allocated.Store(end)
		}
		seg.extendMu.Unlock()
	}
	if cap(buf) <= 1<<20 {
		l.buf = buf[:0]
	}
	if err != nil {
		return l.fail(err)
	}
	testHook("synced")
	l.syncTook.Store(int64(movingAverage(time.Duration(l.syncTook.Load()), took)))
	l.off, l.prev = end, crc
	if last >= 0 {
		seg.last.Store(last)
	}
	l.growAhead()
	return nil
}

func (l *recordLog) fail(err error) error {
	l.failed = fmt.Errorf("sqlite: record log: %w (the store takes no more appends; reopen it)", err)
	return l.failed
}

// next moves appends to a segment whose records SQLite holds durably, or
// to a new one.
func (l *recordLog) next() error {
	l.mu.Lock()
	durable := l.durable.Load()
	var free *segment
	for _, seg := range l.segs {
		if last := seg.last.Load(); seg != l.active && (last < 0 || uint64(last) < durable) {
			free = seg
			break
		}
	}
	if free == nil {
		num := 0
		if len(l.segs) > 0 {
			num = l.segs[len(l.segs)-1].num + 1
		}
		var err error
		if free, err = l.create(num); err != nil {
			l.mu.Unlock()
			return err
		}
		l.segs = append(l.segs, free)
	}
	l.mu.Unlock()
	return l.begin(free)
}

// growAhead allocates the active segment further ahead, in the
// background, once appends come near the end of what is allocated.
//
// The allocator writes and syncs through a file description of its own.
// Linux reports a failed writeback once to each open file description
// that syncs after it: had the allocator synced through the appends'
// descriptor, its sync could take the error of an append's frames, and
// the append's own sync then report none.
func (l *recordLog) growAhead() {
	seg := l.active
	allocated := seg.allocated.Load()
	chunk := min(max(allocated, firstChunk), maxChunk)
	if allocated >= segmentSize || l.off+chunk/2 < allocated || !l.growing.CompareAndSwap(false, true) {
		return
	}
	l.wg.Go(func() {
		defer l.growing.Store(false)
		f, err := openSegment(seg.f.Name(), os.O_WRONLY)
		if err != nil {
			return // appends extend the file themselves
		}
		defer f.Close()
		if !sameFile(f, seg.f) {
			return // the name was given to another file
		}
		seg.extendMu.Lock()
		defer seg.extendMu.Unlock()
		at := seg.allocated.Load()
		if _, err := f.WriteAt(make([]byte, chunk), at); err != nil {
			return
		}
		if datasync(f) == nil {
			seg.allocated.Store(at + chunk)
		}
	})
}

// sameFile reports whether a and b are open on the same file.
func sameFile(a, b *os.File) bool {
	ai, aerr := a.Stat()
	bi, berr := b.Stat()
	return aerr == nil && berr == nil && os.SameFile(ai, bi)
}

// errClosed is the record log's error once it is closed.
var errClosed = errors.New("sqlite: the store is closed")

// close waits for the allocator and closes the segments' files; the log
// then takes no appends.
func (l *recordLog) close() error {
	l.wg.Wait()
	if l.failed == errClosed {
		return nil
	}
	l.failed = errClosed
	var errs []error
	for _, seg := range l.segs {
		errs = append(errs, seg.f.Close())
	}
	return errors.Join(errs...)
}

// writeThenSync writes b at off in f, then syncs f: writeSynced, where
// the system can't do both in one call.
func writeThenSync(f *os.File, b []byte, off int64) error {
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return datasync(f)
}

// syncDir syncs a directory, so that the files created in it outlive a
// crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
