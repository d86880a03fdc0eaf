package main

import (
	"bufio"
	"context"
	"fmt"

	"github.com/agentsec/agentsec/audit/export"
)

func (m *Main) runAuditExport(ctx context.Context, args []string) error {
	fs := newFlagSet("audit export", "-db FILE [-format jsonl|csv|cef] [filters] [-o FILE]",
		`Export writes every record matching the filters, in log order: as JSON lines
holding each record's stored canonical bytes and leaf hash, as CSV, or as
ArcSight CEF lines for a SIEM. Records appended while it runs are left out.
`)
	db := fs.String("db", "", "the audit log's SQLite database `file`, or its PostgreSQL URL")
	format := formatFlag(fs, "jsonl", "csv", "cef")
	out := fs.String("o", "", "write to this `file`, replaced once the export is complete, instead of stdout")
	f := addFilterFlags(fs)
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	if err := checkTimeRange("audit export", f); err != nil {
		return err
	}
	store, err := openStore(ctx, "audit export", *db)
	if err != nil {
		return err
	}
	defer store.Close()

	o, err := m.createOutput(*out, *db)
	if err != nil {
		return err
	}
	defer o.discard()
	w := bufio.NewWriter(o)
	enc, err := export.NewWriter(w, export.Format(*format), version)
	if err != nil {
		return err
	}
	n, err := export.Records(ctx, store, *f, enc)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = o.commit()
	}
	if err != nil {
		return err
	}
	if *out != "" && *out != "-" {
		fmt.Fprintf(m.Stdout, "exported %s to %s\n", plural(n, "record"), *out)
	}
	return nil
}
