package sqlite

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"testing"

	"github.com/agentsec/agentsec/audit"
)

// testFrames are a record, a checkpoint and a record of the largest kind.
func testFrames() []frame {
	return []frame{
		{kind: frameRecord, seq: 7, data: []byte(`{"event":"tool.call"}`), hashes: bytes.Repeat([]byte{1}, 32)},
		{kind: frameCheckpoint, seq: 8, data: []byte("origin\n8\nroot\n\n— sig\n")},
		{kind: frameRecord, seq: 8, data: bytes.Repeat([]byte{'x'}, audit.MaxRecordSize), hashes: bytes.Repeat([]byte{2}, 32*audit.MaxStoredHashes)},
	}
}

// smallFrames are a few small records and checkpoints, for tests that
// try every byte of them.
func smallFrames() []frame {
	return []frame{
		{kind: frameRecord, seq: 0, data: []byte("a"), hashes: bytes.Repeat([]byte{3}, 32)},
		{kind: frameRecord, seq: 1, data: []byte(`{"n":1}`), hashes: bytes.Repeat([]byte{4}, 64)},
		{kind: frameCheckpoint, seq: 2, data: []byte("origin\n2\nroot\n")},
		{kind: frameRecord, seq: 2, data: []byte(`{"n":2}`), hashes: bytes.Repeat([]byte{5}, 96)},
		{kind: frameCheckpoint, seq: 3, data: []byte("c")},
	}
}

// segmentOf encodes a segment with salt holding frames, and returns it
// with the offset where each frame ends.
func segmentOf(salt uint32, frames []frame) ([]byte, []int) {
	b := appendHeader(nil, salt)
	prev := salt
	var ends []int
	for _, f := range frames {
		b, prev = appendFrame(b, prev, f)
		ends = append(ends, len(b))
	}
	return b, ends
}

// rawFrame returns a frame of body, however malformed, with a length and
// a crc that continues prev: only the body's checks can reject it.
func rawFrame(prev uint32, body []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Update(prev, castagnoli, body))
	return append(b, body...)
}

// rawBody returns a body of kind and seq followed by rest.
func rawBody(kind byte, seq uint64, rest ...[]byte) []byte {
	b := binary.LittleEndian.AppendUint64([]byte{kind}, seq)
	for _, r := range rest {
		b = append(b, r...)
	}
	return b
}

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func sameFrames(a, b []frame) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].kind != b[i].kind || a[i].seq != b[i].seq || !bytes.Equal(a[i].data, b[i].data) || !bytes.Equal(a[i].hashes, b[i].hashes) {
			return false
		}
	}
	return true
}

func TestSegmentRoundTrip(t *testing.T) {
	frames := append(testFrames(), smallFrames()...)
	frames = append(frames,
		frame{kind: frameRecord, seq: math.MaxUint64, data: []byte("z"), hashes: make([]byte, 32)},
		frame{kind: frameCheckpoint, seq: math.MaxUint64, data: bytes.Repeat([]byte{'n'}, maxNote)},
	)
	seg, ends := segmentOf(42, frames)
	got := scanSegment(seg)
	if !sameFrames(got, frames) {
		t.Fatalf("scanSegment returned %d frames, not the %d written", len(got), len(frames))
	}
	// The largest record fills the largest frame exactly.
	if n := ends[2] - ends[1] - frameHeader; n != maxFrameBody {
		t.Fatalf("the largest record's body is %d bytes, maxFrameBody %d", n, maxFrameBody)
	}
	// The frames are copies: reusing the buffer does not change them.
	clear(seg)
	if !sameFrames(got, frames) {
		t.Fatal("the frames scanSegment returned changed with the bytes they were read from")
	}
	// Zeros after the frames, as in a segment allocated ahead, end it.
	seg, _ = segmentOf(42, frames)
	if got := scanSegment(append(seg, make([]byte, 4096)...)); !sameFrames(got, frames) {
		t.Fatalf("with zeros after: %d frames, want %d", len(got), len(frames))
	}
	// So does the header alone, or nothing.
	if got := scanSegment(appendHeader(nil, 42)); len(got) != 0 {
		t.Fatalf("a header alone has %d frames", len(got))
	}
	if got := scanSegment(nil); len(got) != 0 {
		t.Fatalf("no bytes have %d frames", len(got))
	}
}

// A crash can tear the last frame anywhere: the frames before it remain.
func TestSegmentTornFrame(t *testing.T) {
	for _, frames := range [][]frame{testFrames(), smallFrames()} {
		seg, ends := segmentOf(1, frames)
		last := len(frames) - 1
		for cut := ends[last-1]; cut < ends[last]; cut++ {
			if got := scanSegment(seg[:cut]); !sameFrames(got, frames[:last]) {
				t.Fatalf("cut at %d of %d: %d frames, want the %d before the last", cut, len(seg), len(got), last)
			}
		}
		if got := scanSegment(seg); !sameFrames(got, frames) {
			t.Fatalf("uncut: %d frames, want %d", len(got), len(frames))
		}
	}
}

// A flipped bit anywhere in a frame ends the log at that frame; anywhere
// in the header, there are no frames.
func TestSegmentFlippedBit(t *testing.T) {
	frames := smallFrames()
	seg, ends := segmentOf(9, frames)
	for i := range seg {
		want := 0
		for want < len(ends) && i >= ends[want] {
			want++
		}
		for bit := range 8 {
			bad := bytes.Clone(seg)
			bad[i] ^= 1 << bit
			if got := scanSegment(bad); !sameFrames(got, frames[:want]) {
				t.Fatalf("bit %d of byte %d flipped: %d frames, want %d", bit, i, len(got), want)
			}
		}
	}
}

// A reused segment gets a new salt and new frames written over the
// start of the old: none of the old frames beyond them continues the new
// chain, whether the new frames are shorter than the old or exactly as
// long, or even the very same frames.
func TestSegmentReuse(t *testing.T) {
	rec := func(seq uint64, data string) frame {
		return frame{kind: frameRecord, seq: seq, data: []byte(data), hashes: bytes.Repeat([]byte{byte(seq)}, 32)}
	}
	old := []frame{rec(1, "aaaa"), rec(2, "bbbb"), {kind: frameCheckpoint, seq: 3, data: []byte("note")}, rec(3, "cccc")}
	for _, tt := range []struct {
		name   string
		fresh  []frame
		asLong bool // the new frames end where old ones did
	}{
		{"shorter", []frame{rec(10, "z")}, false},
		{"shorter, two", []frame{rec(10, "z"), rec(11, "yy")}, false},
		{"as long", []frame{rec(10, "zzzz")}, true},
		{"as long, two", []frame{rec(10, "zzzz"), rec(11, "yyyy")}, true},
		{"the same frame", old[:1], true},
		{"the same frames", old[:3], true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seg, oldEnds := segmentOf(100, old)
			if got := scanSegment(seg); !sameFrames(got, old) {
				t.Fatalf("old segment: %d frames, want %d", len(got), len(old))
			}
			fresh, freshEnds := segmentOf(200, tt.fresh)
			if last := len(tt.fresh) - 1; (freshEnds[last] == oldEnds[last]) != tt.asLong || freshEnds[last] > oldEnds[last] {
				t.Fatalf("the new frames end at %d, the old at %d", freshEnds[last], oldEnds[last])
			}
			copy(seg, fresh)
			if got := scanSegment(seg); !sameFrames(got, tt.fresh) {
				t.Fatalf("reused segment: %d frames, want only the %d new ones", len(got), len(tt.fresh))
			}
		})
	}
}

func TestReadFrameRejects(t *testing.T) {
	const prev = 5
	good, _ := appendFrame(nil, prev, testFrames()[0])
	withLength := func(n uint32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b, n)
		return b
	}
	hashes := make([]byte, 32)
	cases := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"header only", good[:frameHeader]},
		{"length past the buffer", good[:len(good)-1]},
		{"length one past the buffer", withLength(uint32(len(good) - frameHeader + 1))},
		{"length over the largest frame", withLength(0x7fffffff)},
		{"length of all ones", withLength(math.MaxUint32)},
		// Bodies too large for any frame, whole and with their crc.
		{"record over the largest frame", rawFrame(prev, rawBody(frameRecord, 1, u32(audit.MaxRecordSize),
			make([]byte, audit.MaxRecordSize), make([]byte, 32*audit.MaxStoredHashes+1)))},
		{"checkpoint over the largest frame", rawFrame(prev, rawBody(frameCheckpoint, 1, make([]byte, maxFrameBody-9+1)))},
		{"unknown kind 0", rawFrame(prev, rawBody(0, 1, u32(1), []byte("x"), hashes))},
		{"unknown kind 3", rawFrame(prev, rawBody(3, 1, []byte("x")))},
		{"unknown kind 255", rawFrame(prev, rawBody(255, 1, u32(1), []byte("x"), hashes))},
		{"record without hashes", rawFrame(prev, rawBody(frameRecord, 1, u32(1), []byte("x")))},
		{"record hashes not whole", rawFrame(prev, rawBody(frameRecord, 1, u32(1), []byte("x"), make([]byte, 31)))},
		{"record with too many hashes", rawFrame(prev, rawBody(frameRecord, 1, u32(1), []byte("x"), make([]byte, 32*audit.MaxStoredHashes+32)))},
		{"record without data", rawFrame(prev, rawBody(frameRecord, 1, u32(0), hashes))},
		{"record too large", rawFrame(prev, rawBody(frameRecord, 1, u32(audit.MaxRecordSize+1), make([]byte, audit.MaxRecordSize+1), hashes))},
		{"record length past the body", rawFrame(prev, rawBody(frameRecord, 1, u32(40), []byte("x"), hashes))},
		{"record length of all ones", rawFrame(prev, rawBody(frameRecord, 1, u32(math.MaxUint32), []byte("x"), hashes))},
		{"empty checkpoint", rawFrame(prev, rawBody(frameCheckpoint, 1))},
		{"checkpoint too large", rawFrame(prev, rawBody(frameCheckpoint, 1, make([]byte, maxNote+1)))},
		{"another chain", func() []byte {
			b, _ := appendFrame(nil, prev+1, testFrames()[0])
			return b
		}()},
	}
	// Bodies too short for a kind and seq, or a record's length.
	for n := range 1 + 8 + 4 {
		body := make([]byte, n)
		if n > 0 {
			body[0] = frameRecord
		}
		cases = append(cases, struct {
			name string
			b    []byte
		}{fmt.Sprintf("body of %d bytes", n), rawFrame(prev, body)})
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, _, err := readFrame(tt.b, prev); err != errEndOfLog {
				t.Fatalf("readFrame = %v, want errEndOfLog", err)
			}
			// And a segment of it has no frames.
			if got := scanSegment(append(appendHeader(nil, prev), tt.b...)); len(got) != 0 {
				t.Fatalf("scanSegment found %d frames", len(got))
			}
		})
	}
	// The same checks pass frames at the bounds.
	for _, tt := range []struct {
		name string
		f    frame
	}{
		{"a good frame", testFrames()[0]},
		{"the largest record", testFrames()[2]},
		{"the largest checkpoint", frame{kind: frameCheckpoint, seq: 1, data: make([]byte, maxNote)}},
		{"the smallest checkpoint", frame{kind: frameCheckpoint, seq: 1, data: []byte("x")}},
		{"the smallest record", frame{kind: frameRecord, seq: 1, data: []byte("x"), hashes: hashes}},
	} {
		b, wantCRC := appendFrame(nil, prev, tt.f)
		f, n, crc, err := readFrame(append(b, 0xff), prev)
		if err != nil || n != len(b) || crc != wantCRC || !sameFrames([]frame{f}, []frame{tt.f}) {
			t.Fatalf("readFrame of %s = %d, crc %x, %v; want %d, crc %x", tt.name, n, crc, err, len(b), wantCRC)
		}
	}
}

func TestSegmentHeaderRejects(t *testing.T) {
	h := appendHeader(nil, 77)
	if salt, err := readHeader(h); err != nil || salt != 77 {
		t.Fatalf("readHeader = %d, %v; want 77", salt, err)
	}
	if salt, err := readHeader(append(bytes.Clone(h), 1, 2, 3)); err != nil || salt != 77 {
		t.Fatalf("readHeader with bytes after = %d, %v; want 77", salt, err)
	}
	for i := range h {
		bad := bytes.Clone(h)
		bad[i] ^= 0x10
		if _, err := readHeader(bad); err == nil {
			t.Errorf("readHeader accepted a header with byte %d changed", i)
		}
	}
	// A wrong magic with a checksum that matches it.
	wrong := []byte("agsegv2\n\x4d\x00\x00\x00")
	wrong = binary.LittleEndian.AppendUint32(wrong, crc32.Checksum(wrong, castagnoli))
	if _, err := readHeader(wrong); err == nil {
		t.Error("readHeader accepted a wrong magic")
	}
	// A bad checksum of the right magic and salt.
	bad := bytes.Clone(h)
	binary.LittleEndian.PutUint32(bad[12:], binary.LittleEndian.Uint32(bad[12:])+1)
	if _, err := readHeader(bad); err == nil {
		t.Error("readHeader accepted a bad checksum")
	}
	for n := range segmentHeader {
		if _, err := readHeader(h[:n]); err == nil {
			t.Errorf("readHeader accepted a header of %d bytes", n)
		}
	}
}

// FuzzSegment reads segments as an attacker who can write the files
// could leave them. Whatever the bytes, scanning does not panic, returns
// only frames within the format's bounds, reads them unambiguously — the
// frames re-encode to exactly the bytes they came from — and never finds
// more in a prefix of the bytes than in the whole.
func FuzzSegment(f *testing.F) {
	seg, ends := segmentOf(3, smallFrames())
	f.Add(seg)
	f.Add(seg[:ends[2]+5])                                  // torn in a frame's header
	f.Add(seg[:ends[3]-1])                                  // torn in a frame's body
	f.Add(seg[:segmentHeader])                              // a header only
	f.Add([]byte{})                                         // nothing
	f.Add(append(bytes.Clone(seg), make([]byte, 64)...))    // allocated ahead
	f.Add(append(bytes.Clone(seg), 0xff, 0xff, 0xff, 0xff)) // a length past the end
	big, _ := segmentOf(4, testFrames())
	f.Add(big)
	reused, _ := segmentOf(5, smallFrames()[:1])
	f.Add(append(reused, seg[len(reused):]...))
	// Malformed bodies with good checksums, which mutation cannot forge.
	for _, body := range [][]byte{
		{},
		{frameRecord},
		rawBody(frameRecord, 1),
		rawBody(frameRecord, 1, u32(1)),
		rawBody(frameRecord, 1, u32(2), []byte("x")),
		rawBody(frameRecord, 1, u32(1), []byte("x"), make([]byte, 33)),
		rawBody(frameCheckpoint, 1),
		rawBody(9, 1, []byte("x")),
	} {
		f.Add(append(appendHeader(nil, 6), rawFrame(6, body)...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := scanSegment(data)
		for _, fr := range frames {
			switch fr.kind {
			case frameRecord:
				if len(fr.data) == 0 || len(fr.data) > audit.MaxRecordSize || len(fr.hashes) == 0 ||
					len(fr.hashes)%32 != 0 || len(fr.hashes) > 32*audit.MaxStoredHashes {
					t.Fatalf("record frame out of bounds: %d bytes, %d of hashes", len(fr.data), len(fr.hashes))
				}
			case frameCheckpoint:
				if len(fr.data) == 0 || len(fr.data) > maxNote || len(fr.hashes) != 0 {
					t.Fatalf("checkpoint frame out of bounds: %d bytes, %d of hashes", len(fr.data), len(fr.hashes))
				}
			default:
				t.Fatalf("frame of kind %d", fr.kind)
			}
		}
		salt, err := readHeader(data)
		if err != nil {
			if len(frames) != 0 {
				t.Fatalf("%d frames from a segment whose header does not read: %v", len(frames), err)
			}
			return
		}
		again, ends := segmentOf(salt, frames)
		if !bytes.HasPrefix(data, again) {
			t.Fatal("the frames read do not re-encode to the bytes they were read from")
		}
		// Truncation never invents frames: any prefix of the bytes has the
		// frames that end within it. Every prefix of a small input, and of
		// a large one those around the frames' bounds.
		cuts := []int{len(data) - 1, len(data) / 2, segmentHeader - 1, segmentHeader}
		if len(data) <= 512 {
			cuts = cuts[:0]
			for cut := range len(data) {
				cuts = append(cuts, cut)
			}
		} else {
			for _, end := range ends {
				cuts = append(cuts, end-1, end, end+1, end+frameHeader)
			}
		}
		for _, cut := range cuts {
			if cut < 0 || cut > len(data) {
				continue
			}
			want := 0
			for want < len(ends) && ends[want] <= cut {
				want++
			}
			if got := scanSegment(data[:cut]); !sameFrames(got, frames[:want]) {
				t.Fatalf("the first %d of %d bytes have %d frames, want %d", cut, len(data), len(got), want)
			}
		}
	})
}
