package console

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/agentsec/agentsec/audit"
	"github.com/agentsec/agentsec/audit/export"
)

// auditPageSize is how many records a page of the audit search shows.
const auditPageSize = 100

// formTime is how a datetime-local field sends a time, read as UTC.
var formTimes = []string{"2006-01-02T15:04:05", "2006-01-02T15:04", time.RFC3339}

func parseFormTime(s string) (time.Time, error) {
	for _, layout := range formTimes {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time such as 2026-12-04T09:30:00", s)
}

// searchFields are the audit search's form fields.
var searchFields = []string{"since", "until", "agent", "session", "tool", "event", "outcome"}

// searchFilter reads the audit search's filter from a query.
func searchFilter(q url.Values) (audit.Filter, error) {
	f := audit.Filter{Agent: q.Get("agent"), Session: q.Get("session"), Tool: q.Get("tool"), Event: q.Get("event"),
		Outcome: audit.Outcome(q.Get("outcome")), Cursor: q.Get("cursor"), Limit: auditPageSize}
	var err error
	for _, t := range []struct {
		field string
		into  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if s := q.Get(t.field); s != "" && err == nil {
			*t.into, err = parseFormTime(s)
		}
	}
	return f, err
}

// searchQuery returns the search's fields of q, for links.
func searchQuery(q url.Values) url.Values {
	out := url.Values{}
	for _, k := range searchFields {
		if s := q.Get(k); s != "" {
			out.Set(k, s)
		}
	}
	return out
}

func (u *ui) auditPage(w http.ResponseWriter, r *http.Request, op *operator) {
	q := r.URL.Query()
	v := &view{Title: "Audit search", Page: "audit", Operator: op, Form: map[string]string{}}
	for _, k := range searchFields {
		v.Form[k] = q.Get(k)
	}
	f, err := searchFilter(q)
	var page audit.Page
	if err == nil {
		page, err = audit.Query(r.Context(), u.cfg.Stack.Audit.Store(), f)
	}
	switch {
	case errors.Is(err, audit.ErrInvalidFilter) || err != nil && page.Records == nil && !errors.Is(err, audit.ErrUnavailable):
		v.Error = "the search is malformed: " + oneLine(strings.TrimPrefix(err.Error(), "audit: "))
		u.render(w, http.StatusBadRequest, "audit", v)
		return
	case err != nil:
		v.Error = "the audit log can't be read: " + oneLine(err.Error())
		u.render(w, http.StatusServiceUnavailable, "audit", v)
		return
	}
	for i := range page.Records {
		v.Records = append(v.Records, rowOf(&page.Records[i]))
	}
	if page.Next != "" {
		next := searchQuery(q)
		next.Set("cursor", page.Next)
		v.Next = "/audit?" + next.Encode()
	}
	for format, into := range map[export.Format]*string{export.CSV: &v.ExportCSV, export.JSONLines: &v.ExportJSONL} {
		link := searchQuery(q)
		link.Set("format", string(format))
		*into = "/audit/export?" + link.Encode()
	}
	u.render(w, http.StatusOK, "audit", v)
}

// exportTypes are the console's export formats and their media types.
var exportTypes = map[export.Format]string{
	export.JSONLines: "application/jsonl; charset=utf-8",
	export.CSV:       "text/csv; charset=utf-8",
}

// exportRecords sends every record the search matches — not a page — as
// CSV or JSON lines (each record's stored bytes and leaf hash), as a
// download.
func (u *ui) exportRecords(w http.ResponseWriter, r *http.Request, _ *operator) {
	q := r.URL.Query()
	format := export.Format(q.Get("format"))
	mediaType, ok := exportTypes[format]
	if !ok {
		plain(w, http.StatusBadRequest, "format must be csv or jsonl")
		return
	}
	f, err := searchFilter(q)
	if err != nil {
		plain(w, http.StatusBadRequest, "the search is malformed: "+oneLine(err.Error()))
		return
	}
	f.Cursor = ""
	// A long export of a big log may take longer than the listener's
	// write timeout, which is for pages.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	out := &startedWriter{w: w, header: func() {
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Content-Disposition", `attachment; filename="agentsec-audit.`+string(format)+`"`)
	}}
	bw := bufio.NewWriterSize(out, 64<<10)
	enc, _ := export.NewWriter(bw, format, "console")
	_, err = export.Records(r.Context(), u.cfg.Stack.Audit.Store(), f, enc)
	if err == nil {
		err = bw.Flush()
	}
	switch {
	case err == nil:
	case !out.started && errors.Is(err, audit.ErrInvalidFilter):
		plain(w, http.StatusBadRequest, "the search is malformed: "+oneLine(strings.TrimPrefix(err.Error(), "audit: ")))
	case !out.started:
		plain(w, http.StatusServiceUnavailable, "the audit log can't be read: "+oneLine(err.Error()))
	default:
		// The answer has begun: all that can be done is to cut it short,
		// which the client sees as a broken download.
		u.cfg.logger().Error("console: exporting records", "err", err)
		panic(http.ErrAbortHandler)
	}
}

// A startedWriter sets an answer's headers just before its first byte,
// so that a failure before it can still answer with an error.
type startedWriter struct {
	w       http.ResponseWriter
	header  func()
	started bool
}

func (s *startedWriter) Write(p []byte) (int, error) {
	if !s.started {
		s.started = true
		s.header()
	}
	return s.w.Write(p)
}

// An attr is one of a record's attributes, for the page.
type attr struct{ Key, Value string }

func (u *ui) recordPage(w http.ResponseWriter, r *http.Request, op *operator) {
	v := &view{Title: "Record", Page: "audit", Operator: op}
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		v.Error = "no record " + r.PathValue("seq") + ": a record is named by its position, 0 or more"
		u.render(w, http.StatusBadRequest, "audit", v)
		return
	}
	ctx := r.Context()
	store := u.cfg.Stack.Audit.Store()
	var data []byte
	var leaf audit.Hash
	size, err := store.Size(ctx)
	if err == nil && seq >= size {
		v.Error = fmt.Sprintf("no record %d: the log holds %d", seq, size)
		u.render(w, http.StatusNotFound, "audit", v)
		return
	}
	if err == nil {
		err = store.Scan(ctx, seq, seq+1, func(e audit.Entry) error {
			data = slices.Clone(e.Data)
			return nil
		})
	}
	var rec audit.Record
	if err == nil {
		rec, err = audit.DecodeRecord(data)
	}
	if err != nil {
		v.Error = "the record can't be read: " + oneLine(err.Error())
		u.render(w, http.StatusServiceUnavailable, "audit", v)
		return
	}
	rec.Seq = seq
	v.Title = fmt.Sprintf("Record %d", seq)
	v.Record = rowOf(&rec)
	for _, k := range slices.Sorted(maps.Keys(rec.Attrs)) {
		v.Attrs = append(v.Attrs, attr{k, rec.Attrs[k]})
	}
	v.Canonical = string(data)
	leaf = tlog.RecordHash(data)
	v.LeafHash = base64.StdEncoding.EncodeToString(leaf[:])
	cpSize, signed, err := store.LatestCheckpoint(ctx)
	switch {
	case err != nil:
		v.NoProof = "the latest checkpoint can't be read: " + oneLine(err.Error())
	case signed == nil || cpSize <= seq:
		v.NoProof = "No signed checkpoint covers this record yet; the next one will."
	default:
		proof, err := audit.ProveInclusion(ctx, store, seq, signed)
		if err != nil {
			v.NoProof = "the proof can't be made: " + oneLine(err.Error())
		} else {
			v.Proof = proofText(proof)
		}
	}
	u.render(w, http.StatusOK, "record", v)
}

// proofText writes an inclusion proof as the text
// "agentsec audit check-proof" reads.
func proofText(p *audit.InclusionProof) string {
	text, err := p.MarshalText()
	if err != nil {
		return "the proof can't be written: " + err.Error()
	}
	return string(text)
}
