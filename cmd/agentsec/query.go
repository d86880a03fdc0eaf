package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentsec/agentsec/audit"
)

// addFilterFlags defines the flags that select records, shared by query and
// export, and returns the filter they fill in.
func addFilterFlags(fs *flag.FlagSet) *audit.Filter {
	f := new(audit.Filter)
	timeFlag := func(name, usage string, t *time.Time) {
		fs.Func(name, usage, func(s string) error {
			v, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return fmt.Errorf("want an RFC 3339 time such as 2025-06-01T12:00:00Z")
			}
			*t = v
			return nil
		})
	}
	timeFlag("since", "only records at or after this RFC 3339 `time`", &f.Since)
	timeFlag("until", "only records before this RFC 3339 `time`", &f.Until)
	fs.StringVar(&f.Agent, "agent", "", "only records of this `agent`")
	fs.StringVar(&f.Session, "session", "", "only records of this `session`")
	fs.StringVar(&f.Tool, "tool", "", "only records of this `tool`")
	fs.StringVar(&f.Event, "event", "", "only records of this `event`, such as tool.call")
	fs.StringVar(&f.Namespace, "namespace", "", "only records of this `namespace`")
	fs.Func("outcome", "only records with this `outcome`: allow or deny", func(s string) error {
		switch o := audit.Outcome(s); o {
		case audit.OutcomeAllowed, audit.OutcomeDenied:
			f.Outcome = o
			return nil
		}
		return fmt.Errorf("want allow or deny")
	})
	return f
}

// formatFlag defines -format, whose value is one of formats, the first by
// default: another value is a usage error, as a malformed number is.
func formatFlag(fs *flag.FlagSet, formats ...string) *string {
	v := formats[0]
	list := strings.Join(formats[:len(formats)-1], ", ") + " or " + formats[len(formats)-1]
	fs.Func("format", fmt.Sprintf("output `format`: %s (default %s)", list, v), func(s string) error {
		if !slices.Contains(formats, s) {
			return fmt.Errorf("use %s", list)
		}
		v = s
		return nil
	})
	return &v
}

// checkTimeRange refuses a filter whose -until is before its -since.
func checkTimeRange(cmd string, f *audit.Filter) error {
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Until.Before(f.Since) {
		return fmt.Errorf("%s: -until %s is before -since %s", cmd,
			f.Until.Format(time.RFC3339Nano), f.Since.Format(time.RFC3339Nano))
	}
	return nil
}

func (m *Main) runAuditQuery(ctx context.Context, args []string) error {
	fs := newFlagSet("audit query", "-db FILE [filters] [-limit N] [-cursor C] [-format table|jsonl]",
		`Query prints the records matching every filter given, in log order, a page
at a time. When more records match, it prints the -cursor of the next page
on stderr.
`)
	db := fs.String("db", "", "the audit log's SQLite database `file`, or its PostgreSQL URL")
	f := addFilterFlags(fs)
	f.Limit = audit.DefaultLimit
	fs.Func("limit", fmt.Sprintf("print at most `N` records, up to %d (default %d)", audit.MaxLimit, audit.DefaultLimit), func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > audit.MaxLimit {
			return fmt.Errorf("want a number from 1 to %d", audit.MaxLimit)
		}
		f.Limit = n
		return nil
	})
	fs.Func("cursor", "continue from the `cursor` an earlier query printed, with the same filters", func(s string) error {
		if _, err := strconv.ParseUint(s, 10, 64); err != nil {
			return fmt.Errorf("pass the number a 'next page' line printed")
		}
		f.Cursor = s
		return nil
	})
	format := formatFlag(fs, "table", "jsonl")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	write := writeTable
	if *format == "jsonl" {
		write = writeRecordLines
	}
	if err := checkTimeRange("audit query", f); err != nil {
		return err
	}
	store, err := openStore(ctx, "audit query", *db)
	if err != nil {
		return err
	}
	defer store.Close()
	page, err := audit.Query(ctx, store, *f)
	if err != nil {
		return err
	}
	if err := write(m.Stdout, page.Records); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(m.Stderr, "next page: -cursor %s\n", page.Next)
	}
	return nil
}

// tableTime is how a table shows a record's time: UTC, to the microsecond.
const tableTime = "2006-01-02T15:04:05.000000Z"

func writeTable(w io.Writer, records []audit.Record) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tAGENT\tSESSION\tTOOL\tOUTCOME\tTOKENS\tREASON")
	for _, r := range records {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Seq, r.Time.UTC().Format(tableTime),
			cell(r.Event), cell(r.Agent), cell(r.Session), cell(r.Tool), cell(string(r.Outcome)), r.Tokens, cell(r.Reason))
	}
	return tw.Flush()
}

// cell returns s for a table: escaped as textsafe.Escape does, "-" if empty.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return escapeText(s)
}

// writeRecordLines writes each record as one JSON object: its canonical
// encoding with its index in the log as a first key. The canonical
// encoding escapes only the C0 controls; the other characters a terminal
// could act on are escaped here, which leaves the values as they are.
func writeRecordLines(w io.Writer, records []audit.Record) error {
	bw := bufio.NewWriter(w)
	var buf []byte
	for _, r := range records {
		var err error
		buf, err = audit.EncodeRecord(buf[:0], &r)
		if err != nil {
			return fmt.Errorf("record %d: %w", r.Seq, err)
		}
		fmt.Fprintf(bw, `{"index":%d,`, r.Seq)
		bw.WriteString(oneLine(string(buf[1:])))
		bw.WriteByte('\n')
	}
	return bw.Flush()
}
