// Package export writes audit records for other tools: JSON lines that
// keep each record's stored canonical bytes and leaf hash, so that an
// outsider can check them against a proof; CSV for spreadsheets; and
// ArcSight CEF lines for SIEMs. Every field an agent chose is escaped so
// that it can act on no terminal, spreadsheet or viewer (textsafe).
package export

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/internal/textsafe"
)

// A Format is an export format.
type Format string

// The formats.
const (
	JSONLines Format = "jsonl"
	CSV       Format = "csv"
	CEF       Format = "cef"
)

// Formats are the formats, by name.
var Formats = []Format{JSONLines, CSV, CEF}

// A Writer writes records in one format.
type Writer struct {
	w      io.Writer
	enc    exporter
	begun  bool
	closed bool
}

// NewWriter returns a Writer of format to w. version names the software
// in CEF lines' headers.
func NewWriter(w io.Writer, format Format, version string) (*Writer, error) {
	var enc exporter
	switch format {
	case JSONLines:
		enc = jsonlExporter{}
	case CSV:
		enc = &csvExporter{}
	case CEF:
		enc = cefExporter{version: version}
	default:
		return nil, fmt.Errorf("export: unknown format %q; use jsonl, csv or cef", format)
	}
	return &Writer{w: w, enc: enc}, nil
}

func (w *Writer) begin() error {
	if w.begun {
		return nil
	}
	w.begun = true
	return w.enc.begin(w.w)
}

// Write writes record r, whose stored canonical bytes are data.
func (w *Writer) Write(r *audit.Record, data []byte) error {
	if err := w.begin(); err != nil {
		return err
	}
	return w.enc.write(w.w, r, data)
}

// Close ends the export — a CSV export with no record still has its
// header — and flushes what the Writer buffers. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.begin(); err != nil {
		return err
	}
	return w.enc.end(w.w)
}

// An exporter writes records in one format.
type exporter interface {
	begin(w io.Writer) error
	// write writes record r, whose stored canonical bytes are data.
	write(w io.Writer, r *audit.Record, data []byte) error
	end(w io.Writer) error
}

// Records writes to w every record of store matching f that the log held
// when the export started, in log order, closes w, and returns how many
// records it wrote.
func Records(ctx context.Context, store audit.Store, f audit.Filter, w *Writer) (uint64, error) {
	size, err := store.Size(ctx)
	if err != nil {
		return 0, err
	}
	var n uint64
	f.Limit = audit.MaxLimit
	for {
		page, err := audit.Query(ctx, store, f)
		if err != nil {
			return n, err
		}
		recs := page.Records
		for len(recs) > 0 && recs[len(recs)-1].Seq >= size {
			recs = recs[:len(recs)-1]
		}
		data, err := storedBytes(ctx, store, recs)
		if err != nil {
			return n, err
		}
		for i := range recs {
			if err := w.Write(&recs[i], data[i]); err != nil {
				return n, err
			}
			n++
		}
		if page.Next == "" || len(recs) < len(page.Records) {
			break
		}
		f.Cursor = page.Next
	}
	return n, w.Close()
}

// storedBytes returns the stored canonical bytes of records, read with
// one Scan per run of consecutive sequence numbers.
func storedBytes(ctx context.Context, store audit.Store, records []audit.Record) ([][]byte, error) {
	data := make([][]byte, len(records))
	for i := 0; i < len(records); {
		j := i + 1
		for j < len(records) && records[j].Seq == records[j-1].Seq+1 {
			j++
		}
		k := i
		err := store.Scan(ctx, records[i].Seq, records[j-1].Seq+1, func(e audit.Entry) error {
			if k == j || e.Seq != records[k].Seq {
				return fmt.Errorf("reading record %d: the store returned record %d", records[min(k, j-1)].Seq, e.Seq)
			}
			data[k] = bytes.Clone(e.Data)
			k++
			return nil
		})
		if err != nil {
			return nil, err
		}
		if k != j {
			return nil, fmt.Errorf("reading record %d: the store no longer has it", records[k].Seq)
		}
		i = j
	}
	return data, nil
}

// jsonlExporter writes one JSON object per line:
//
//	{"index":N,"leaf_hash":"<base64>","record":<the stored canonical bytes>}
//
// The leaf hash is the RFC 6962 leaf hash of the record's bytes, so that a
// reader can recompute it and check the record against a proof.
//
// So the record bytes go out verbatim, unlike every other output's: the
// canonical encoding escapes the C0 controls, but DEL, C1 controls and
// format characters such as bidi overrides are in them as they are.
// Escaping those would break the leaf hash of exactly the records that
// hold them; a JSON reader decodes them either way, and a terminal gets
// them escaped from audit query.
type jsonlExporter struct{}

func (jsonlExporter) begin(io.Writer) error { return nil }
func (jsonlExporter) end(io.Writer) error   { return nil }

func (jsonlExporter) write(w io.Writer, r *audit.Record, data []byte) error {
	h := tlog.RecordHash(data)
	_, err := fmt.Fprintf(w, `{"index":%d,"leaf_hash":"%s","record":%s}`+"\n",
		r.Seq, base64.StdEncoding.EncodeToString(h[:]), data)
	return err
}

// CSVHeader names the CSV columns; attrs is a JSON object.
var CSVHeader = []string{"index", "time", "namespace", "event", "agent", "session", "tool",
	"scope", "outcome", "reason", "required", "assigned", "tokens", "attrs"}

type csvExporter struct{ cw *csv.Writer }

func (e *csvExporter) begin(w io.Writer) error {
	e.cw = csv.NewWriter(w)
	return e.cw.Write(CSVHeader)
}

func (e *csvExporter) write(_ io.Writer, r *audit.Record, _ []byte) error {
	attrs := ""
	if len(r.Attrs) > 0 {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(r.Attrs); err != nil {
			return err
		}
		// encoding/json leaves DEL, C1 controls and bidi controls as
		// they are; OneLine escapes them, and the cell stays JSON.
		attrs = textsafe.OneLine(strings.TrimSuffix(b.String(), "\n"))
	}
	return e.cw.Write([]string{
		strconv.FormatUint(r.Seq, 10), r.Time.UTC().Format(TimeFormat), CSVText(r.Namespace), CSVText(r.Event),
		CSVText(r.Agent), CSVText(r.Session), CSVText(r.Tool), CSVText(r.Scope), CSVText(string(r.Outcome)), CSVText(r.Reason),
		CSVText(r.RequiredLevel), CSVText(r.AssignedLevel), strconv.FormatInt(r.Tokens, 10), attrs,
	})
}

// CSVText returns a text field as a CSV cell. It is escaped as
// textsafe.Escape does, so the cell is one line without control characters; and a cell
// that starts with a character a spreadsheet takes for the start of a
// formula — '=', '+', '-', '@' — gets a ' in front, as OWASP recommends
// against CSV injection, and so does a cell that starts with ' itself, so
// that distinct values stay distinct: a reader drops one leading ' and
// unquotes the rest as a Go string. Tab and CR, which OWASP lists too, are
// escaped already.
func CSVText(s string) string {
	s = textsafe.Escape(s)
	if s != "" && strings.IndexByte("=+-@'", s[0]) >= 0 {
		return "'" + s
	}
	return s
}

func (e *csvExporter) end(io.Writer) error {
	e.cw.Flush()
	return e.cw.Error()
}

// TimeFormat is the time format of CSV exports, the canonical encoding's.
const TimeFormat = "2006-01-02T15:04:05.000000000Z"

// cefExporter writes ArcSight Common Event Format lines:
//
//	CEF:0|agentsec|agentsec|<version>|<event>|<name>|<severity>|<extensions>
type cefExporter struct{ version string }

func (cefExporter) begin(io.Writer) error { return nil }
func (cefExporter) end(io.Writer) error   { return nil }

func (e cefExporter) write(w io.Writer, r *audit.Record, _ []byte) error {
	_, err := io.WriteString(w, CEFLine(r, e.version))
	return err
}

// CEFLine returns the CEF line of r, newline included; version names the
// software in its header. The name is the
// event, then the tool and the outcome when there are any; the severity is
// 3 for an allowed call, 7 for a denied one and 1 for anything else. Empty
// fields have no extension.
func CEFLine(r *audit.Record, version string) string {
	name := r.Event
	for _, s := range []string{r.Tool, string(r.Outcome)} {
		if s != "" {
			name += " " + s
		}
	}
	severity := "1"
	switch r.Outcome {
	case audit.OutcomeAllowed:
		severity = "3"
	case audit.OutcomeDenied:
		severity = "7"
	}
	var b strings.Builder
	b.WriteString("CEF:0|agentsec|agentsec|")
	for _, h := range []string{version, r.Event, name, severity} {
		b.WriteString(CEFHeader(h))
		b.WriteByte('|')
	}
	fmt.Fprintf(&b, "rt=%d externalId=%d", r.Time.UnixMilli(), r.Seq)
	ext := func(key, v string) {
		if v != "" {
			b.WriteByte(' ')
			b.WriteString(key)
			b.WriteByte('=')
			b.WriteString(CEFValue(v))
		}
	}
	labeled := func(key, label, v string) {
		if v != "" {
			ext(key+"Label", label)
			ext(key, v)
		}
	}
	ext("act", string(r.Outcome))
	ext("suser", r.Agent)
	labeled("cs1", "session", r.Session)
	labeled("cs2", "tool", r.Tool)
	labeled("cs3", "namespace", r.Namespace)
	if r.Tokens != 0 {
		labeled("cn1", "tokens", strconv.FormatInt(r.Tokens, 10))
	}
	ext("reason", r.Reason)
	b.WriteByte('\n')
	return b.String()
}

// CEF escaping. A header field escapes '|', an extension value '=', and
// both a backslash, as the CEF rules say. Beyond the rules, every other
// character a terminal or a SIEM's viewer could act on is escaped as
// textsafe.Escape does: CR and LF become \r and \n, which CEF defines for
// extension values, so that a record cannot start a line of its own (in
// a header too: a forged line is worse than a nonstandard escape), and
// the rest become Go escapes such as \x1b or \u202e, which a CEF reader
// shows as they are. textsafe.Escape doubles backslashes and never writes
// '|' or '='. CEFHeader escapes a header field, CEFValue an extension's
// value.
func CEFHeader(s string) string { return strings.ReplaceAll(textsafe.Escape(s), "|", `\|`) }

// CEFValue escapes an extension's value; see CEFHeader.
func CEFValue(s string) string { return strings.ReplaceAll(textsafe.Escape(s), "=", `\=`) }
