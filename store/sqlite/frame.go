package sqlite

import (
	"encoding/binary"
	"errors"
	"hash/crc32"

	"github.com/agentsec/agentsec/audit"
)

// The record log's files are segments: a header, then frames, each a
// record or a signed checkpoint.
//
// A segment's header is 16 bytes: the magic "agsegv1\n", a random salt
// (uint32, little-endian, as every integer here), and the CRC-32C of the
// twelve bytes before it.
//
// A frame is
//
//	u32  n     length of the body
//	u32  crc   CRC-32C of the body, continued from the previous frame's
//	           crc, or from the segment's salt for its first frame
//	body:
//	  u8   kind  frameRecord or frameCheckpoint
//	  u64  seq   a record's sequence number, or the tree size a
//	             checkpoint signs
//	  record:     u32 length of the record's bytes, the bytes, then its
//	              tree hashes, 32 bytes each, to the end of the body
//	  checkpoint: the signed note, to the end of the body
//
// Chaining the checksums is what lets a segment be reused without
// erasing it: a reused segment gets a new salt, so none of its old frames
// continues the new chain; and a frame left over from a write that was
// torn by a crash, and then partly overwritten, does not continue the
// frame written over its start.
const (
	segmentMagic  = "agsegv1\n"
	segmentHeader = 16
	frameHeader   = 8

	frameRecord     byte = 1
	frameCheckpoint byte = 2

	// maxNote bounds a checkpoint frame's note.
	maxNote = 64 << 10
	// maxFrameBody bounds a frame's body: the largest record with the
	// most tree hashes one entry stores.
	maxFrameBody = 1 + 8 + 4 + audit.MaxRecordSize + 32*audit.MaxStoredHashes
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// A frame is one record or checkpoint of the record log.
type frame struct {
	kind   byte
	seq    uint64 // the record's sequence number, or the checkpoint's tree size
	data   []byte // the record's bytes, or the checkpoint's note
	hashes []byte // the record's packed tree hashes
}

// appendHeader appends a segment header with salt to dst.
func appendHeader(dst []byte, salt uint32) []byte {
	start := len(dst)
	dst = append(dst, segmentMagic...)
	dst = binary.LittleEndian.AppendUint32(dst, salt)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// readHeader returns the salt of the segment header at the start of b.
func readHeader(b []byte) (uint32, error) {
	if len(b) < segmentHeader || string(b[:8]) != segmentMagic {
		return 0, errors.New("not a record log segment")
	}
	if crc32.Checksum(b[:12], castagnoli) != binary.LittleEndian.Uint32(b[12:16]) {
		return 0, errors.New("segment header's checksum does not match")
	}
	return binary.LittleEndian.Uint32(b[8:12]), nil
}

// appendFrame appends f to dst, chained to prev, and returns the frame's
// crc, which the next frame continues.
func appendFrame(dst []byte, prev uint32, f frame) ([]byte, uint32) {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	dst = append(dst, f.kind)
	dst = binary.LittleEndian.AppendUint64(dst, f.seq)
	if f.kind == frameRecord {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(f.data)))
		dst = append(dst, f.data...)
		dst = append(dst, f.hashes...)
	} else {
		dst = append(dst, f.data...)
	}
	body := dst[start+frameHeader:]
	crc := crc32.Update(prev, castagnoli, body)
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc)
	return dst, crc
}

// errEndOfLog is readFrame's report that b does not start with a frame
// that continues the chain: the log's end, or whatever a crash left
// after it.
var errEndOfLog = errors.New("end of the record log")

// readFrame reads the frame at the start of b, which must continue the
// chain from prev. It returns the frame, whose slices point into b, its
// length in b and its crc. Anything that is not a whole, well-formed
// frame continuing the chain is errEndOfLog.
func readFrame(b []byte, prev uint32) (frame, int, uint32, error) {
	if len(b) < frameHeader {
		return frame{}, 0, 0, errEndOfLog
	}
	n := binary.LittleEndian.Uint32(b)
	if n < 1+8 || n > maxFrameBody || uint64(n) > uint64(len(b)-frameHeader) {
		return frame{}, 0, 0, errEndOfLog
	}
	body := b[frameHeader : frameHeader+int(n)]
	crc := crc32.Update(prev, castagnoli, body)
	if crc != binary.LittleEndian.Uint32(b[4:]) {
		return frame{}, 0, 0, errEndOfLog
	}
	f := frame{kind: body[0], seq: binary.LittleEndian.Uint64(body[1:9])}
	rest := body[9:]
	switch f.kind {
	case frameRecord:
		if len(rest) < 4 {
			return frame{}, 0, 0, errEndOfLog
		}
		dl := binary.LittleEndian.Uint32(rest)
		rest = rest[4:]
		if dl == 0 || dl > audit.MaxRecordSize || uint64(dl) > uint64(len(rest)) {
			return frame{}, 0, 0, errEndOfLog
		}
		f.data, f.hashes = rest[:dl], rest[dl:]
		if len(f.hashes) == 0 || len(f.hashes)%32 != 0 || len(f.hashes) > 32*audit.MaxStoredHashes {
			return frame{}, 0, 0, errEndOfLog
		}
	case frameCheckpoint:
		if len(rest) == 0 || len(rest) > maxNote {
			return frame{}, 0, 0, errEndOfLog
		}
		f.data = rest
	default:
		return frame{}, 0, 0, errEndOfLog
	}
	return f, frameHeader + int(n), crc, nil
}
