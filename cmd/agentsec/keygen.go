package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/agentsec/agentsec/audit"
)

// runKeygen makes an Ed25519 key pair for signing audit checkpoints:
// NAME.key, the signer key, readable by its owner only, and NAME.pub, the
// verifier key to hand to whoever verifies the log.
func (m *Main) runKeygen(_ context.Context, args []string) error {
	fs := newFlagSet("keygen", "-name NAME [-dir DIR]",
		"Writes DIR/NAME.key, the signer key for audit checkpoints (keep it secret), and\n"+
			"DIR/NAME.pub, the verifier key to hand to whoever verifies the log.\n")
	name := fs.String("name", "", "key name, shown in every signature (for example the host name)")
	dir := fs.String("dir", ".", "directory to write NAME.key and NAME.pub to")
	if err := m.parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("keygen needs -name; for example: agentsec keygen -name audit.example.com")
	}
	if strings.ContainsAny(*name, `/\`) || *name == "." || *name == ".." {
		return fmt.Errorf("keygen: key name %q is not a file name; put the keys elsewhere with -dir", *name)
	}
	skey, vkey, err := audit.GenerateKey(*name)
	if err == nil {
		// GenerateKey takes any name, but a key whose name has a space
		// or a '+' cannot be parsed back.
		_, _, err = audit.NewSigner(skey)
	}
	if err != nil {
		return fmt.Errorf("keygen: invalid key name %q (a key name has no spaces or '+')", *name)
	}
	keyPath := filepath.Join(*dir, *name+".key")
	pubPath := filepath.Join(*dir, *name+".pub")
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("keygen: %s exists; remove it or choose another -name", p)
		}
	}
	if err := writeNew(keyPath, skey+"\n", 0o600); err != nil {
		return err
	}
	if err := writeNew(pubPath, vkey+"\n", 0o644); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "wrote signer key %s (keep it secret)\nwrote verifier key %s:\n%s\n", keyPath, pubPath, vkey)
	return nil
}

// writeNew writes a file that must not exist yet.
func writeNew(path, data string, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return fmt.Errorf("keygen: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("keygen: %w", err)
	}
	return f.Close()
}
