package audit_test

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentsec/agentsec/audit"
	"github.com/google/go-cmp/cmp"
)

// t0 is a time with every fractional digit in use.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 123456789, time.UTC)

const t0JSON = `"2025-01-02T03:04:05.123456789Z"`

func TestEncodeRecord(t *testing.T) {
	tests := []struct {
		name string
		rec  audit.Record
		want string
	}{
		{
			name: "minimal",
			rec:  audit.Record{Event: "tool.call", Time: t0},
			want: `{"event":"tool.call","time":` + t0JSON + `}`,
		},
		{
			name: "every field in key order",
			rec: audit.Record{
				Seq: 99, Time: t0, Namespace: "ns", Event: "tool.call",
				Agent: "alice", Session: "s-1", Tool: "search", Scope: "read",
				Outcome: audit.OutcomeDenied, Reason: "too low",
				RequiredLevel: "privileged", AssignedLevel: "verified",
				Tokens: 42, Attrs: map[string]string{"k": "v"},
			},
			want: `{"agent":"alice","assigned":"verified","attrs":{"k":"v"},"event":"tool.call",` +
				`"namespace":"ns","outcome":"deny","reason":"too low","required":"privileged",` +
				`"scope":"read","session":"s-1","time":` + t0JSON + `,"tokens":42,"tool":"search"}`,
		},
		{
			name: "empty attrs map omitted",
			rec:  audit.Record{Event: "e", Time: t0, Attrs: map[string]string{}},
			want: `{"event":"e","time":` + t0JSON + `}`,
		},
		{
			name: "attrs sorted by bytes",
			rec: audit.Record{Event: "e", Time: t0, Attrs: map[string]string{
				"b": "2", "a": "1", "B": "3", "aa": "4", "é": "5", "a\"": "6",
			}},
			want: `{"attrs":{"B":"3","a":"1","a\"":"6","aa":"4","b":"2","é":"5"},"event":"e","time":` + t0JSON + `}`,
		},
		{
			name: "attrs with empty value",
			rec:  audit.Record{Event: "e", Time: t0, Attrs: map[string]string{"k": ""}},
			want: `{"attrs":{"k":""},"event":"e","time":` + t0JSON + `}`,
		},
		{
			name: "whole seconds keep nine digits",
			rec:  audit.Record{Event: "e", Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
			want: `{"event":"e","time":"2025-01-02T03:04:05.000000000Z"}`,
		},
		{
			name: "one nanosecond",
			rec:  audit.Record{Event: "e", Time: time.Date(2025, 1, 2, 3, 4, 5, 1, time.UTC)},
			want: `{"event":"e","time":"2025-01-02T03:04:05.000000001Z"}`,
		},
		{
			name: "time in another location is written in UTC",
			rec:  audit.Record{Event: "e", Time: t0.In(time.FixedZone("east", 5*3600+1800))},
			want: `{"event":"e","time":` + t0JSON + `}`,
		},
		{
			name: "time west of UTC crossing a day",
			rec:  audit.Record{Event: "e", Time: time.Date(2024, 12, 31, 23, 30, 0, 0, time.FixedZone("west", -8*3600))},
			want: `{"event":"e","time":"2025-01-01T07:30:00.000000000Z"}`,
		},
		{
			name: "time in Local",
			rec:  audit.Record{Event: "e", Time: t0.Local()},
			want: `{"event":"e","time":` + t0JSON + `}`,
		},
		{
			name: "zero time",
			rec:  audit.Record{Event: "e"},
			want: `{"event":"e","time":"0001-01-01T00:00:00.000000000Z"}`,
		},
		{
			name: "earliest and latest years",
			rec:  audit.Record{Event: "e", Time: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), Reason: "x"},
			want: `{"event":"e","reason":"x","time":"0000-01-01T00:00:00.000000000Z"}`,
		},
		{
			name: "last instant of year 9999",
			rec:  audit.Record{Event: "e", Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
			want: `{"event":"e","time":"9999-12-31T23:59:59.999999999Z"}`,
		},
		{
			name: "largest tokens",
			rec:  audit.Record{Event: "e", Time: t0, Tokens: math.MaxInt64},
			want: `{"event":"e","time":` + t0JSON + `,"tokens":9223372036854775807}`,
		},
		{
			name: "escapes quote and backslash",
			rec:  audit.Record{Event: `a"b\c`, Time: t0},
			want: `{"event":"a\"b\\c","time":` + t0JSON + `}`,
		},
		{
			name: "control characters as lowercase \\u00xx",
			rec:  audit.Record{Event: "\x00\x01\b\t\n\f\r\x1a\x1f", Time: t0},
			want: `{"event":"\u0000\u0001\u0008\u0009\u000a\u000c\u000d\u001a\u001f","time":` + t0JSON + `}`,
		},
		{
			name: "DEL, slash and HTML characters raw",
			rec:  audit.Record{Event: "\x7f/<>&'", Time: t0},
			want: "{\"event\":\"\x7f/<>&'\",\"time\":" + t0JSON + "}",
		},
		{
			name: "non-ASCII raw",
			rec:  audit.Record{Event: "é 日本 😀 \u2028\u2029 \ufeff \ufffd", Time: t0},
			want: "{\"event\":\"é 日本 😀 \u2028\u2029 \ufeff \ufffd\",\"time\":" + t0JSON + "}",
		},
		{
			name: "escapes in attrs keys and values",
			rec:  audit.Record{Event: "e", Time: t0, Attrs: map[string]string{"k\n\"": "v\\\x02"}},
			want: `{"attrs":{"k\u000a\"":"v\\\u0002"},"event":"e","time":` + t0JSON + `}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := audit.EncodeRecord(nil, &tt.rec)
			if err != nil {
				t.Fatalf("EncodeRecord: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("EncodeRecord:\ngot  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestEncodeRecordAppends(t *testing.T) {
	rec := audit.Record{Event: "e", Time: t0}
	dst := []byte("prefix")
	got, err := audit.EncodeRecord(dst, &rec)
	if err != nil {
		t.Fatalf("EncodeRecord: %v", err)
	}
	if want := `prefix{"event":"e","time":` + t0JSON + `}`; string(got) != want {
		t.Errorf("EncodeRecord(%q, ...) = %s, want %s", dst, got, want)
	}
}

// recordOfSize returns a record whose encoding is exactly n bytes long.
func recordOfSize(t testing.TB, n int) audit.Record {
	t.Helper()
	rec := audit.Record{Event: "e", Time: t0, Reason: "x"}
	b, err := audit.EncodeRecord(nil, &rec)
	if err != nil {
		t.Fatalf("EncodeRecord: %v", err)
	}
	rec.Reason = strings.Repeat("x", n-len(b)+1)
	return rec
}

func TestEncodeRecordErrors(t *testing.T) {
	tests := []struct {
		name string
		rec  audit.Record
	}{
		{"empty event", audit.Record{Time: t0}},
		{"unknown outcome", audit.Record{Event: "e", Time: t0, Outcome: "maybe"}},
		{"outcome in other case", audit.Record{Event: "e", Time: t0, Outcome: "Allow"}},
		{"negative tokens", audit.Record{Event: "e", Time: t0, Tokens: -1}},
		{"min tokens", audit.Record{Event: "e", Time: t0, Tokens: math.MinInt64}},
		{"invalid UTF-8 event", audit.Record{Event: "e\xff", Time: t0}},
		{"invalid UTF-8 namespace", audit.Record{Event: "e", Namespace: "\xc3", Time: t0}},
		{"invalid UTF-8 agent", audit.Record{Event: "e", Agent: "\xed\xa0\x80", Time: t0}}, // a surrogate
		{"invalid UTF-8 session", audit.Record{Event: "e", Session: "\x80", Time: t0}},
		{"invalid UTF-8 tool", audit.Record{Event: "e", Tool: "\xfe", Time: t0}},
		{"invalid UTF-8 scope", audit.Record{Event: "e", Scope: "\xe2\x82", Time: t0}},
		{"invalid UTF-8 reason", audit.Record{Event: "e", Reason: "\xc0\xaf", Time: t0}}, // overlong '/'
		{"invalid UTF-8 required", audit.Record{Event: "e", RequiredLevel: "\xff", Time: t0}},
		{"invalid UTF-8 assigned", audit.Record{Event: "e", AssignedLevel: "\xff", Time: t0}},
		{"invalid UTF-8 attr key", audit.Record{Event: "e", Time: t0, Attrs: map[string]string{"\xff": "v"}}},
		{"invalid UTF-8 attr value", audit.Record{Event: "e", Time: t0, Attrs: map[string]string{"k": "\xff"}}},
		{"empty attr key", audit.Record{Event: "e", Time: t0, Attrs: map[string]string{"": "v"}}},
		{"year 10000", audit.Record{Event: "e", Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"year -1", audit.Record{Event: "e", Time: time.Date(-1, 12, 31, 0, 0, 0, 0, time.UTC)}},
		{"year 10000 only in UTC", audit.Record{Event: "e", Time: time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("west", -3600))}},
		{"larger than MaxRecordSize", recordOfSize(t, audit.MaxRecordSize+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := audit.EncodeRecord([]byte("dst"), &tt.rec)
			if !errors.Is(err, audit.ErrInvalidRecord) {
				t.Errorf("EncodeRecord: got error %v, want %v", err, audit.ErrInvalidRecord)
			}
			if string(got) != "dst" {
				t.Errorf("EncodeRecord returned %.80q on error, want dst unchanged", got)
			}
		})
	}
}

func TestDecodeRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rec  audit.Record
	}{
		{"minimal", audit.Record{Event: "tool.call", Time: t0}},
		{"every field", audit.Record{
			Time: t0, Namespace: "ns", Event: "tool.call", Agent: "alice",
			Session: "s-1", Tool: "search", Scope: "read", Outcome: audit.OutcomeAllowed,
			Reason: "ok", RequiredLevel: "public", AssignedLevel: "verified",
			Tokens: math.MaxInt64, Attrs: map[string]string{"a": "1", "b": "", "é\n": "\"\\"},
		}},
		{"zero time", audit.Record{Event: "e"}},
		{"escapes and non-ASCII", audit.Record{Event: "\x00\x1f\"\\/é😀\u2028\x7f", Time: t0}},
		{"exactly MaxRecordSize", recordOfSize(t, audit.MaxRecordSize)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := audit.EncodeRecord(nil, &tt.rec)
			if err != nil {
				t.Fatalf("EncodeRecord: %v", err)
			}
			got, err := audit.DecodeRecord(data)
			if err != nil {
				t.Fatalf("DecodeRecord(%s): %v", data, err)
			}
			if diff := cmp.Diff(tt.rec, got); diff != "" {
				t.Errorf("DecodeRecord(EncodeRecord(r)) mismatch (-want +got):\n%s", diff)
			}
			if got.Time.Location() != time.UTC {
				t.Errorf("DecodeRecord: got time in %v, want UTC", got.Time.Location())
			}
		})
	}
}

func TestDecodeRecordSeqAndLocation(t *testing.T) {
	rec := audit.Record{Seq: 7, Event: "e", Time: t0.In(time.FixedZone("east", 3600))}
	data, err := audit.EncodeRecord(nil, &rec)
	if err != nil {
		t.Fatalf("EncodeRecord: %v", err)
	}
	got, err := audit.DecodeRecord(data)
	if err != nil {
		t.Fatalf("DecodeRecord: %v", err)
	}
	if got.Seq != 0 {
		t.Errorf("DecodeRecord: got Seq %d, want 0", got.Seq)
	}
	if !got.Time.Equal(t0) || got.Time.Location() != time.UTC {
		t.Errorf("DecodeRecord: got time %v, want %v", got.Time, t0)
	}
}

// valid is a canonical record the rejection cases below are variations of.
const valid = `{"event":"e","time":` + t0JSON + `}`

func TestDecodeRecordValidBase(t *testing.T) {
	if _, err := audit.DecodeRecord([]byte(valid)); err != nil {
		t.Fatalf("DecodeRecord(%s): %v", valid, err)
	}
}

// nonCanonical lists inputs DecodeRecord must reject, each a small change
// to a canonical record. FuzzDecodeRecord uses them as seeds.
var nonCanonical = []struct {
	name, data string
}{
	{"empty", ``},
	{"null", `null`},
	{"array", `[]`},
	{"string", `"e"`},
	{"empty object", `{}`},
	{"leading space", ` ` + valid},
	{"trailing space", valid + ` `},
	{"trailing newline", valid + "\n"},
	{"space after colon", `{"event": "e","time":` + t0JSON + `}`},
	{"space after comma", `{"event":"e", "time":` + t0JSON + `}`},
	{"tab inside object", "{\t\"event\":\"e\",\"time\":" + t0JSON + "}"},
	{"keys out of order", `{"time":` + t0JSON + `,"event":"e"}`},
	{"agent after event", `{"event":"e","agent":"a","time":` + t0JSON + `}`},
	{"tokens after tool", `{"event":"e","time":` + t0JSON + `,"tool":"t","tokens":1}`},
	{"duplicated key", `{"event":"e","event":"e","time":` + t0JSON + `}`},
	{"duplicated key with other value", `{"agent":"a","agent":"b","event":"e","time":` + t0JSON + `}`},
	{"duplicated time", `{"event":"e","time":` + t0JSON + `,"time":` + t0JSON + `}`},
	{"unknown key", `{"event":"e","extra":"x","time":` + t0JSON + `}`},
	{"seq key", `{"event":"e","seq":1,"time":` + t0JSON + `}`},
	{"key in other case", `{"Event":"e","time":` + t0JSON + `}`},
	{"float tokens", `{"event":"e","time":` + t0JSON + `,"tokens":1.0}`},
	{"exponent tokens", `{"event":"e","time":` + t0JSON + `,"tokens":1e2}`},
	{"zero tokens present", `{"event":"e","time":` + t0JSON + `,"tokens":0}`},
	{"negative zero tokens", `{"event":"e","time":` + t0JSON + `,"tokens":-0}`},
	{"negative tokens", `{"event":"e","time":` + t0JSON + `,"tokens":-1}`},
	{"plus sign tokens", `{"event":"e","time":` + t0JSON + `,"tokens":+1}`},
	{"leading zeros", `{"event":"e","time":` + t0JSON + `,"tokens":007}`},
	{"tokens as string", `{"event":"e","time":` + t0JSON + `,"tokens":"1"}`},
	{"tokens overflow", `{"event":"e","time":` + t0JSON + `,"tokens":9223372036854775808}`},
	{"escape instead of A", `{"event":"\u0041","time":` + t0JSON + `}`},
	{"escaped slash", `{"event":"a\/b","time":` + t0JSON + `}`},
	{"short escape for newline", `{"event":"a\nb","time":` + t0JSON + `}`},
	{"uppercase hex escape", `{"event":"\u001F","time":` + t0JSON + `}`},
	{"escaped non-ASCII", `{"event":"\u00e9","time":` + t0JSON + `}`},
	{"escaped surrogate pair", `{"event":"\ud83d\ude00","time":` + t0JSON + `}`},
	{"raw control character", "{\"event\":\"a\x01b\",\"time\":" + t0JSON + "}"},
	{"null value", `{"agent":null,"event":"e","time":` + t0JSON + `}`},
	{"null event", `{"event":null,"time":` + t0JSON + `}`},
	{"empty string present", `{"agent":"","event":"e","time":` + t0JSON + `}`},
	{"empty event", `{"event":"","time":` + t0JSON + `}`},
	{"empty attrs object", `{"attrs":{},"event":"e","time":` + t0JSON + `}`},
	{"null attrs", `{"attrs":null,"event":"e","time":` + t0JSON + `}`},
	{"attrs out of order", `{"attrs":{"b":"1","a":"2"},"event":"e","time":` + t0JSON + `}`},
	{"attrs duplicated key", `{"attrs":{"a":"1","a":"1"},"event":"e","time":` + t0JSON + `}`},
	{"attrs empty key", `{"attrs":{"":"1"},"event":"e","time":` + t0JSON + `}`},
	{"attrs number value", `{"attrs":{"a":1},"event":"e","time":` + t0JSON + `}`},
	{"attrs null value", `{"attrs":{"a":null},"event":"e","time":` + t0JSON + `}`},
	{"attrs nested object", `{"attrs":{"a":{}},"event":"e","time":` + t0JSON + `}`},
	{"unknown outcome", `{"event":"e","outcome":"maybe","time":` + t0JSON + `}`},
	{"invalid UTF-8", "{\"event\":\"e\xff\",\"time\":" + t0JSON + "}"},
	{"replacement for invalid UTF-8", "{\"event\":\"e\xef\xbf\xbd\xff\",\"time\":" + t0JSON + "}"},
	{"invalid UTF-8 in attrs key", "{\"attrs\":{\"\xc3\":\"v\"},\"event\":\"e\",\"time\":" + t0JSON + "}"},
	{"invalid UTF-8 outside strings", valid + "\xff"},
	{"trailing object", valid + valid},
	{"trailing brace", valid + `}`},
	{"trailing bracket", valid + `]`},
	{"trailing garbage", valid + `x`},
	{"trailing NUL", valid + "\x00"},
	{"truncated", valid[:len(valid)-1]},
	{"missing event", `{"time":` + t0JSON + `}`},
	{"missing time", `{"event":"e"}`},
	{"time as number", `{"event":"e","time":0}`},
	{"time with three digits", `{"event":"e","time":"2025-01-02T03:04:05.123Z"}`},
	{"time without fraction", `{"event":"e","time":"2025-01-02T03:04:05Z"}`},
	{"time with ten digits", `{"event":"e","time":"2025-01-02T03:04:05.1234567890Z"}`},
	{"time with offset", `{"event":"e","time":"2025-01-02T04:04:05.123456789+01:00"}`},
	{"time with zero offset", `{"event":"e","time":"2025-01-02T03:04:05.123456789+00:00"}`},
	{"time with lowercase z", `{"event":"e","time":"2025-01-02T03:04:05.123456789z"}`},
	{"time without zone", `{"event":"e","time":"2025-01-02T03:04:05.123456789"}`},
	{"time with space", `{"event":"e","time":"2025-01-02 03:04:05.123456789Z"}`},
	{"time with comma", `{"event":"e","time":"2025-01-02T03:04:05,123456789Z"}`},
	{"time on day 32", `{"event":"e","time":"2025-01-32T03:04:05.123456789Z"}`},
	{"time on February 30", `{"event":"e","time":"2025-02-30T03:04:05.123456789Z"}`},
	{"time with leap second", `{"event":"e","time":"2016-12-31T23:59:60.000000000Z"}`},
	{"time with hour 24", `{"event":"e","time":"2025-01-02T24:00:00.000000000Z"}`},
	{"time with five digit year", `{"event":"e","time":"10000-01-01T00:00:00.000000000Z"}`},
	{"time with negative year", `{"event":"e","time":"-0001-01-01T00:00:00.000000000Z"}`},
}

func TestDecodeRecordRejects(t *testing.T) {
	for _, tt := range nonCanonical {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := audit.DecodeRecord([]byte(tt.data)); err == nil {
				t.Errorf("DecodeRecord(%q) = %+v, nil; want error", tt.data, r)
			}
		})
	}
}

func TestDecodeRecordSizeLimit(t *testing.T) {
	// The encoder refuses records over MaxRecordSize, so build one by
	// hand: canonical in every way except its size.
	rec := recordOfSize(t, audit.MaxRecordSize)
	data, err := audit.EncodeRecord(nil, &rec)
	if err != nil {
		t.Fatalf("EncodeRecord: %v", err)
	}
	if _, err := audit.DecodeRecord(data); err != nil {
		t.Fatalf("DecodeRecord of %d bytes: %v", len(data), err)
	}
	over := bytes.Replace(data, []byte(`"reason":"x`), []byte(`"reason":"xx`), 1)
	if len(over) != audit.MaxRecordSize+1 {
		t.Fatalf("test record is %d bytes, want %d", len(over), audit.MaxRecordSize+1)
	}
	if _, err := audit.DecodeRecord(over); err == nil {
		t.Errorf("DecodeRecord of %d bytes = nil error, want error", len(over))
	}
}

func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range []audit.Record{
		{Event: "e", Time: t0},
		{
			Time: t0, Namespace: "ns", Event: "tool.call", Agent: "alice",
			Session: "s-1", Tool: "search", Scope: "read", Outcome: audit.OutcomeDenied,
			Reason: "r\x00\"\\é", RequiredLevel: "privileged", AssignedLevel: "public",
			Tokens: 12345, Attrs: map[string]string{"a": "1", "b\n": "2"},
		},
	} {
		data, err := audit.EncodeRecord(nil, &rec)
		if err != nil {
			f.Fatalf("EncodeRecord: %v", err)
		}
		f.Add(data)
	}
	for _, tt := range nonCanonical {
		f.Add([]byte(tt.data))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := audit.DecodeRecord(data)
		if err != nil {
			return
		}
		if r.Seq != 0 {
			t.Errorf("DecodeRecord: got Seq %d, want 0", r.Seq)
		}
		again, err := audit.EncodeRecord(nil, &r)
		if err != nil {
			t.Fatalf("DecodeRecord(%q) succeeded, but EncodeRecord of the result failed: %v", data, err)
		}
		if !bytes.Equal(again, data) {
			t.Errorf("DecodeRecord accepted a non-canonical record:\ngot  %q\nwant %q", again, data)
		}
	})
}

func FuzzEncodeRecord(f *testing.F) {
	f.Add("tool.call", "ns", "alice", "s-1", "search", "read", "ok", "public", "verified", "k", "v", uint8(1), int64(42), int64(1735787045), int64(123456789))
	f.Add("e", "", "", "", "", "", "", "", "", "", "", uint8(0), int64(0), int64(0), int64(0))
	f.Add("\x00\"\\", "é", "😀", "\u2028", "\x7f", "\x1f", "a\nb", "", "", "k\"", "\\", uint8(2), int64(math.MaxInt64), int64(-62135596800), int64(999999999))
	f.Add("", "ns", "", "", "", "", "", "", "", "", "", uint8(0), int64(0), int64(0), int64(0))
	f.Add("e\xff", "", "", "", "", "", "", "", "", "", "", uint8(0), int64(0), int64(0), int64(0))
	f.Add("e", "", "", "", "", "", "", "", "", "", "\xc3", uint8(0), int64(-1), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, event, ns, agent, session, tool, scope, reason, required, assigned, attrKey, attrValue string, outcome uint8, tokens, sec, nsec int64) {
		// Keep the time within the years the encoding can hold.
		const first, last = -62167219200, 253402300799 // 0000-01-01 and 9999-12-31T23:59:59 UTC
		sec = first + int64(uint64(sec)%uint64(last-first+1))
		rec := audit.Record{
			Time: time.Unix(sec, int64(uint64(nsec)%1e9)).UTC(), Namespace: ns,
			Event: event, Agent: agent, Session: session, Tool: tool, Scope: scope,
			Outcome: [...]audit.Outcome{"", audit.OutcomeAllowed, audit.OutcomeDenied}[outcome%3],
			Reason:  reason, RequiredLevel: required, AssignedLevel: assigned, Tokens: tokens,
		}
		if attrKey != "" || attrValue != "" {
			rec.Attrs = map[string]string{attrKey: attrValue}
		}

		valid := event != "" && tokens >= 0 && (rec.Attrs == nil || attrKey != "")
		size := 0
		for _, s := range []string{event, ns, agent, session, tool, scope, reason, required, assigned, attrKey, attrValue} {
			valid = valid && utf8.ValidString(s)
			size += len(s)
		}
		data, err := audit.EncodeRecord(nil, &rec)
		switch {
		case err != nil && !errors.Is(err, audit.ErrInvalidRecord):
			t.Fatalf("EncodeRecord: got error %v, want %v", err, audit.ErrInvalidRecord)
		case err == nil && !valid:
			t.Fatalf("EncodeRecord(%+v) = %q, nil; want error", rec, data)
		case err != nil && valid && size < audit.MaxRecordSize/8:
			// Escaping grows a string at most sixfold, so this is far
			// below the size limit.
			t.Fatalf("EncodeRecord(%+v): %v", rec, err)
		case err != nil:
			return
		}
		got, err := audit.DecodeRecord(data)
		if err != nil {
			t.Fatalf("DecodeRecord(%q): %v", data, err)
		}
		if diff := cmp.Diff(rec, got); diff != "" {
			t.Errorf("DecodeRecord(EncodeRecord(r)) mismatch (-want +got):\n%s", diff)
		}
	})
}
