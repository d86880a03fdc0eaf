// Package pgtest gives tests a PostgreSQL server of their own: a throwaway
// cluster in a temporary directory, listening on loopback, started with the
// PostgreSQL binaries installed on the machine (Debian's postgresql
// package puts them in /usr/lib/postgresql/N/bin). Each test gets a fresh
// database on it.
//
// AGENTSEC_TEST_POSTGRES, a connection string, points the tests at an
// existing server instead; its user must be allowed to create databases.
//
// Without either, the tests skip and say why; with CI=true they fail
// instead, so CI can't pass without having run them.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names the variable that points the tests at an existing server.
const EnvDSN = "AGENTSEC_TEST_POSTGRES"

// A Server is a PostgreSQL server for tests.
type Server struct {
	// DSN connects to the server's maintenance database as a user who
	// may create databases.
	DSN string

	dir, bin, runAs string // empty for a server the tests did not start
	port            int
}

var (
	shared     *Server
	sharedErr  error
	sharedOnce sync.Once
)

// Shared returns the package's server, starting it on first use; it
// stays up until Stop. A test package that uses it should call Stop from
// TestMain. If there is no server to be had, the test skips, or fails
// under CI=true.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() {
		if dsn := os.Getenv(EnvDSN); dsn != "" {
			shared = &Server{DSN: dsn}
			return
		}
		shared, sharedErr = Start()
	})
	if sharedErr != nil {
		unavailable(t, sharedErr)
	}
	return shared
}

// StopShared stops the package's server if Shared started one.
func StopShared() {
	if shared != nil {
		shared.Stop()
	}
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	msg := fmt.Sprintf("no PostgreSQL for this test: %v (install Debian's postgresql package, or set %s to a server's connection string)", err, EnvDSN)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// DB returns the connection string of a new, empty database on the
// package's server, dropped when the test ends.
func DB(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDB(t)
}

// NewDB creates a new, empty database on s and returns its connection
// string; it is dropped when the test ends.
func (s *Server) NewDB(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	name := "agentsec_test_" + randomHex(6)
	conn, err := pgx.Connect(ctx, s.DSN)
	if err != nil {
		t.Fatalf("pgtest: connecting to %s: %v", s.DSN, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, s.DSN)
		if err != nil {
			return // the server is gone; so is the database, or it will be
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return withDatabase(s.DSN, name)
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(dsn, name string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn + " dbname=" + name // key=value form
	}
	u.Path = "/" + name
	return u.String()
}

// Start initializes and starts a new cluster in a temporary directory.
// As root it runs the server as the postgres user, as PostgreSQL
// requires.
func Start() (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return nil, errors.New("running as root, and there is no postgres user to run the server as")
		}
		s.runAs = "postgres"
	}
	if s.dir, err = os.MkdirTemp("", "agentsec-pgtest-"); err != nil {
		return nil, err
	}
	if s.runAs != "" {
		if out, err := exec.Command("chown", s.runAs, s.dir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("chown %s: %v: %s", s.dir, err, out)
		}
	}
	data := filepath.Join(s.dir, "data")
	if out, err := s.run("initdb", "-D", data, "-U", "agentsec", "-A", "trust", "-E", "UTF8", "--no-instructions"); err != nil {
		s.removeDir()
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	// The port is free when chosen, and may be another test's by the
	// time the server binds it: then another is chosen.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			s.removeDir()
			return nil, err
		}
		err = s.start()
		if err == nil {
			break
		}
		if !portTaken(err) || attempt == 5 {
			s.removeDir()
			return nil, err
		}
	}
	s.DSN = fmt.Sprintf("postgres://agentsec@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	return s, nil
}

// Restart starts the server again after Kill, on the same
// port and data; it returns once the server accepts connections. If
// another process took the port meanwhile, it tries again for a few
// seconds.
func (s *Server) Restart() error {
	if s.dir == "" {
		return errors.New("pgtest: the server was not started by the tests")
	}
	for attempt := 1; ; attempt++ {
		err := s.start()
		if err == nil || !portTaken(err) || attempt == 10 {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// portTaken reports whether the server failed to start because another
// process holds its port.
func portTaken(err error) bool {
	return strings.Contains(err.Error(), "already in use") || strings.Contains(err.Error(), "could not bind")
}

// start starts the server on s.port; it returns once the server accepts
// connections.
func (s *Server) start() error {
	// A fresh log for each start, so that what it says is this start's.
	os.Remove(filepath.Join(s.dir, "log"))
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=300 -c fsync=on", s.port, s.dir)
	out, err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "-o", opts, "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pg_ctl start: %v: %s\n%s", err, out, log)
	}
	return nil
}

// Kill stops the server at once, as a crash would: "immediate" shutdown,
// without a checkpoint, so it recovers from its WAL on Restart.
func (s *Server) Kill() error { return s.stop("immediate") }

// Stop stops the server, if the tests started it, and removes its files.
func (s *Server) Stop() {
	if s.dir == "" {
		return
	}
	_ = s.stop("fast")
	s.removeDir()
}

func (s *Server) stop(mode string) error {
	if s.dir == "" {
		return errors.New("pgtest: the server was not started by the tests")
	}
	out, err := s.run("pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", mode, "-w", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

func (s *Server) removeDir() {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// run runs one of the PostgreSQL binaries, as the postgres user when the
// tests run as root, for two minutes at most.
func (s *Server) run(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path := filepath.Join(s.bin, name)
	cmd := exec.CommandContext(ctx, path, args...)
	if s.runAs != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", s.runAs, "--", path}, args...)...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// binDir finds the PostgreSQL server binaries: on PATH, or the newest of
// Debian's /usr/lib/postgresql/N/bin.
func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	if len(dirs) == 0 {
		return "", errors.New("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql")
	}
	return filepath.Dir(dirs[0]), nil
}

func version(initdb string) int {
	n, _ := strconv.Atoi(strings.Split(strings.TrimPrefix(initdb, "/usr/lib/postgresql/"), "/")[0])
	return n
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
