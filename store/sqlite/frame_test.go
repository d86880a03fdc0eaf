package sqlite

import (
	"bytes"
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
	frames := testFrames()
	seg, _ := segmentOf(42, frames)
	if got := scanSegment(seg); !sameFrames(got, frames) {
		t.Fatalf("scanSegment returned %d frames, not the %d written", len(got), len(frames))
	}
	// Zeros after the frames, as in a segment allocated ahead, end it.
	if got := scanSegment(append(seg, make([]byte, 4096)...)); !sameFrames(got, frames) {
		t.Fatalf("with zeros after: %d frames, want %d", len(got), len(frames))
	}
}

// A crash can tear the last frame anywhere: the frames before it remain.
func TestSegmentTornFrame(t *testing.T) {
	frames := testFrames()[:2]
	seg, ends := segmentOf(1, frames)
	for cut := ends[0]; cut < ends[1]; cut++ {
		if got := scanSegment(seg[:cut]); !sameFrames(got, frames[:1]) {
			t.Fatalf("cut at %d: %d frames, want the first only", cut, len(got))
		}
	}
}

// A flipped bit anywhere in a frame ends the log at that frame.
func TestSegmentFlippedBit(t *testing.T) {
	frames := testFrames()[:2]
	seg, ends := segmentOf(9, frames)
	for i := segmentHeader; i < ends[1]; i++ {
		for bit := range 8 {
			bad := bytes.Clone(seg)
			bad[i] ^= 1 << bit
			want := 0
			if i >= ends[0] {
				want = 1
			}
			if got := scanSegment(bad); !sameFrames(got, frames[:want]) {
				t.Fatalf("bit %d of byte %d flipped: %d frames, want %d", bit, i, len(got), want)
			}
		}
	}
}

// A reused segment gets a new salt: none of its old frames continues the
// new chain, whether the new frames are shorter than the old or exactly
// as long.
func TestSegmentReuse(t *testing.T) {
	old := []frame{
		{kind: frameRecord, seq: 1, data: []byte("aaaa"), hashes: make([]byte, 32)},
		{kind: frameRecord, seq: 2, data: []byte("bbbb"), hashes: make([]byte, 32)},
		{kind: frameRecord, seq: 3, data: []byte("cccc"), hashes: make([]byte, 32)},
	}
	for _, tt := range []struct {
		name  string
		fresh []frame
	}{
		{"shorter", []frame{{kind: frameRecord, seq: 10, data: []byte("z"), hashes: make([]byte, 32)}}},
		{"as long", []frame{{kind: frameRecord, seq: 10, data: []byte("zzzz"), hashes: make([]byte, 32)}}},
		{"the same frame", old[:1]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			seg, _ := segmentOf(100, old)
			fresh, _ := segmentOf(200, tt.fresh)
			copy(seg, fresh)
			if got := scanSegment(seg); !sameFrames(got, tt.fresh) {
				t.Fatalf("reused segment: %d frames, want only the %d new ones", len(got), len(tt.fresh))
			}
		})
	}
}

func TestReadFrameRejects(t *testing.T) {
	good, _ := appendFrame(nil, 5, testFrames()[0])
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"header only", good[:frameHeader]},
		{"length past the buffer", good[:len(good)-1]},
		{"length over the largest frame", func() []byte {
			b := bytes.Clone(good)
			b[0], b[1], b[2], b[3] = 0xff, 0xff, 0xff, 0x7f
			return b
		}()},
		{"unknown kind", func() []byte {
			b, _ := appendFrame(nil, 5, frame{kind: 3, seq: 1, data: []byte("x")})
			return b
		}()},
		{"record without hashes", func() []byte {
			b, _ := appendFrame(nil, 5, frame{kind: frameRecord, seq: 1, data: []byte("x")})
			return b
		}()},
		{"record hashes not whole", func() []byte {
			b, _ := appendFrame(nil, 5, frame{kind: frameRecord, seq: 1, data: []byte("x"), hashes: make([]byte, 31)})
			return b
		}()},
		{"empty checkpoint", func() []byte {
			b, _ := appendFrame(nil, 5, frame{kind: frameCheckpoint, seq: 1})
			return b
		}()},
		{"another chain", func() []byte {
			b, _ := appendFrame(nil, 6, testFrames()[0])
			return b
		}()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, _, err := readFrame(tt.b, 5); err != errEndOfLog {
				t.Fatalf("readFrame = %v, want errEndOfLog", err)
			}
		})
	}
	if f, n, _, err := readFrame(good, 5); err != nil || n != len(good) || !sameFrames([]frame{f}, testFrames()[:1]) {
		t.Fatalf("readFrame of a good frame = %+v, %d, %v", f, n, err)
	}
}

func TestReadHeaderRejects(t *testing.T) {
	h := appendHeader(nil, 77)
	if salt, err := readHeader(h); err != nil || salt != 77 {
		t.Fatalf("readHeader = %d, %v; want 77", salt, err)
	}
	for i := range h {
		bad := bytes.Clone(h)
		bad[i] ^= 0x10
		if _, err := readHeader(bad); err == nil {
			t.Errorf("readHeader accepted a header with byte %d changed", i)
		}
	}
	if _, err := readHeader(h[:segmentHeader-1]); err == nil {
		t.Error("readHeader accepted a short header")
	}
}

// FuzzSegment reads segments as an attacker who can write the files
// could leave them. Whatever the bytes, scanning does not panic, returns
// only frames within the format's bounds, reads them unambiguously — the
// frames re-encode to exactly the bytes they came from — and never finds
// more in a prefix of the bytes than in the whole.
func FuzzSegment(f *testing.F) {
	seg, ends := segmentOf(3, testFrames()[:2])
	f.Add(seg)
	f.Add(seg[:ends[0]+5])
	f.Add(seg[:segmentHeader])
	f.Add([]byte{})
	f.Add(append(bytes.Clone(seg), make([]byte, 64)...))
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
					t.Fatalf("checkpoint frame out of bounds: %d bytes", len(fr.data))
				}
			default:
				t.Fatalf("frame of kind %d", fr.kind)
			}
		}
		if len(frames) == 0 {
			return
		}
		salt, err := readHeader(data)
		if err != nil {
			t.Fatalf("frames from a segment whose header does not read: %v", err)
		}
		again, _ := segmentOf(salt, frames)
		if !bytes.HasPrefix(data, again) {
			t.Fatal("the frames read do not re-encode to the bytes they were read from")
		}
		if prefix := scanSegment(data[:len(again)-1]); len(prefix) != len(frames)-1 || !sameFrames(prefix, frames[:len(frames)-1]) {
			t.Fatalf("without its last byte the segment has %d frames, want %d", len(prefix), len(frames)-1)
		}
	})
}
