package main

import (
	"context"
	"fmt"

	"github.com/agentsec/agentsec/config"
	"github.com/agentsec/agentsec/store/postgres"
)

// runMigrate creates or upgrades the schema of the PostgreSQL database a
// configuration names.
func (m *Main) runMigrate(ctx context.Context, args []string) error {
	fs := newFlagSet("migrate", "-config FILE",
		"Creates the agentsec schema in the PostgreSQL database that postgres.url names,\n"+
			"or upgrades it to this agentsec's version. Run it once before the first\n"+
			"replica starts, and after upgrading agentsec; replicas never change the\n"+
			"schema themselves. Running it again changes nothing.\n")
	file := fs.String("config", "agentsec.yaml", "the configuration `file`")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return err
	}
	if cfg.Postgres.URL == "" {
		return fmt.Errorf("%s: migrate needs postgres.url, the database replicas share; a SQLite log needs no migrating", *file)
	}
	from, to, err := postgres.Migrate(ctx, cfg.Postgres.URL)
	if err != nil {
		return err
	}
	if from == to {
		fmt.Fprintf(m.Stdout, "schema is at version %d already; nothing to do\n", to)
		return nil
	}
	fmt.Fprintf(m.Stdout, "schema migrated from version %d to %d\n", from, to)
	return nil
}
