package console

import (
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"path"
	"sync"
	"time"
)

// The console: pages rendered on the server from templates embedded in
// the binary, with one script of its own for the live view and no other
// origin's — it works with no internet. Operators sign in with their
// token; a session cookie, HttpOnly and SameSite=Strict, then names them.
// Every page answers with a Content-Security-Policy that allows no inline
// script and nothing from elsewhere, and every change is a POST that
// cross-origin protection checks (Handler).

//go:embed assets
var assets embed.FS

// csp is the console's Content-Security-Policy.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// sessionCookie names an operator's console session.
const sessionCookie = "agentsec_console"

// Bounds of the console's sessions and forms.
const (
	sessionLifetime = 12 * time.Hour
	maxSessions     = 10_000
	// maxOperatorSessions bounds the console sessions of one operator.
	maxOperatorSessions = 16
	// maxOperatorLiveViews and maxLiveViews bound the live streams open,
	// of one operator and in all: each holds a queue of records.
	maxOperatorLiveViews = 8
	maxLiveViews         = 128
	maxFormBytes         = 64 << 10
)

// An operator is who is signed in.
type operator struct {
	ID    string
	Admin bool
}

// ui serves the console's pages.
type ui struct {
	cfg    Config
	pages  map[string]*template.Template
	tail   *tailer
	verify verification

	mu        sync.Mutex
	sessions  map[string]uiSession
	liveViews map[string]int // live streams open, by operator
	liveTotal int            // and in all
}

// A uiSession is a signed-in operator, known by their token's hash, which
// is checked again at every request: an operator removed or made a viewer
// by a reload is so at once.
type uiSession struct {
	sum     [32]byte
	expires time.Time
}

func newUI(cfg Config) *ui {
	u := &ui{cfg: cfg, pages: map[string]*template.Template{}, sessions: map[string]uiSession{},
		tail: newTailer(cfg.Stack.Audit.Store())}
	for _, page := range []string{"login", "live", "audit", "record", "agents", "integrity", "sessions", "upstreams"} {
		u.pages[page] = template.Must(template.ParseFS(assets, "assets/layout.html", "assets/"+page+".html"))
	}
	return u
}

// routes adds the console's routes to mux.
func (u *ui) routes(mux *http.ServeMux) {
	static, _ := fs.Sub(assets, "assets")
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		switch path.Ext(r.PathValue("file")) {
		case ".css", ".js", ".svg": // not the templates
			securityHeaders(w.Header())
			w.Header().Set("Cache-Control", "no-cache")
			files.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/live", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /login", u.loginPage)
	mux.HandleFunc("POST /login", u.login)
	mux.HandleFunc("POST /logout", u.logout)
	mux.HandleFunc("GET /live", u.signedIn(u.livePage))
	mux.HandleFunc("GET /live/stream", u.signedIn(u.liveStream))
	mux.HandleFunc("GET /audit", u.signedIn(u.auditPage))
	mux.HandleFunc("GET /audit/records/{seq}", u.signedIn(u.recordPage))
	mux.HandleFunc("GET /audit/export", u.signedIn(u.exportRecords))
	mux.HandleFunc("GET /agents", u.signedIn(u.agentsPage))
	mux.HandleFunc("POST /agents/assign", u.signedIn(u.admin(u.refuseOnAgents, u.assign)))
	mux.HandleFunc("POST /agents/revoke", u.signedIn(u.admin(u.refuseOnAgents, u.revoke)))
	if u.cfg.Sessions != nil {
		mux.HandleFunc("GET /sessions", u.signedIn(u.sessionsPage))
		mux.HandleFunc("POST /sessions/end", u.signedIn(u.admin(u.refuseOnSessions, u.endSession)))
	}
	if u.cfg.Upstreams != nil {
		mux.HandleFunc("GET /upstreams", u.signedIn(u.upstreamsPage))
	}
	mux.HandleFunc("GET /integrity", u.signedIn(u.integrityPage))
	mux.HandleFunc("POST /integrity/verify", u.signedIn(u.startVerify))
	mux.HandleFunc("GET /integrity/status", u.signedIn(u.verifyStatus))
}

// securityHeaders sets the headers every console answer carries.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
}

// A view is what a page's template gets.
type view struct {
	Title, Page   string
	Operator      *operator
	Error, Notice string
	// The page's own data.
	Filter       liveFilter
	LiveFrom     string // the log position the live view streams from
	Records      []recordRow
	Form         map[string]string
	Next         string
	ExportCSV    string // the search's exports
	ExportJSONL  string
	Record       recordRow
	Attrs        []attr
	Canonical    string
	LeafHash     string
	Proof        string
	NoProof      string
	Ladder       string
	Levels       []string
	Assignments  []assignmentRow
	Integrity    *integrityView
	Verification *verificationView
	Sessions     []sessionRow
	Upstreams    []upstreamRow
	HasSessions  bool // the sessions page is served
	HasUpstreams bool // the upstreams page is served
}

// render writes a page.
func (u *ui) render(w http.ResponseWriter, status int, page string, v *view) {
	v.HasSessions, v.HasUpstreams = u.cfg.Sessions != nil, u.cfg.Upstreams != nil
	securityHeaders(w.Header())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := u.pages[page].ExecuteTemplate(w, "layout", v); err != nil {
		u.cfg.logger().Error("console: rendering a page", "page", page, "err", err)
	}
}

// operatorOf returns the operator signed in with r's session cookie.
func (u *ui) operatorOf(r *http.Request) (*operator, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || u.cfg.Operator == nil {
		return nil, false
	}
	u.mu.Lock()
	s, ok := u.sessions[c.Value]
	u.mu.Unlock()
	if !ok || time.Now().After(s.expires) {
		return nil, false
	}
	id, admin, ok := u.cfg.Operator(s.sum)
	if !ok {
		return nil, false
	}
	return &operator{ID: id, Admin: admin}, true
}

// signedIn serves h to a signed-in operator; others are sent to sign in,
// or, for what is not a page, refused.
func (u *ui) signedIn(h func(http.ResponseWriter, *http.Request, *operator)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		op, ok := u.operatorOf(r)
		if !ok {
			if r.Method == http.MethodGet && r.URL.Path != "/live/stream" {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			securityHeaders(w.Header())
			plain(w, http.StatusUnauthorized, "sign in first: /login")
			return
		}
		h(w, r, op)
	}
}

// A refusal answers a change with status and why, on the page of the
// change.
type refusal func(w http.ResponseWriter, r *http.Request, op *operator, status int, msg string)

// admin serves h to an admin; a viewer is refused with 403. It reads the
// form, whose size it bounds.
func (u *ui) admin(refuse refusal, h func(http.ResponseWriter, *http.Request, *operator)) func(http.ResponseWriter, *http.Request, *operator) {
	return func(w http.ResponseWriter, r *http.Request, op *operator) {
		if !op.Admin {
			refuse(w, r, op, http.StatusForbidden, "operator "+op.ID+" is a viewer: changes need the admin role")
			return
		}
		if status, msg := readForm(w, r); status != 0 {
			refuse(w, r, op, status, msg)
			return
		}
		h(w, r, op)
	}
}

// refuseOnAgents and refuseOnSessions are the refusals of the agents and
// sessions pages' changes.
func (u *ui) refuseOnAgents(w http.ResponseWriter, _ *http.Request, op *operator, status int, msg string) {
	u.render(w, status, "agents", u.agentsView(op, msg, ""))
}

func (u *ui) refuseOnSessions(w http.ResponseWriter, r *http.Request, op *operator, status int, msg string) {
	u.render(w, status, "sessions", u.sessionsView(r, op, msg, ""))
}

// readForm parses a POST's form, bounded; if it can't, it returns the
// status and message to refuse it with.
func readForm(w http.ResponseWriter, r *http.Request) (int, string) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	err := r.ParseForm()
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, "the form is larger than 64 KiB"
	case err != nil:
		return http.StatusBadRequest, "the form is malformed: " + oneLine(err.Error())
	}
	return 0, ""
}

func (u *ui) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := u.operatorOf(r); ok {
		http.Redirect(w, r, "/live", http.StatusSeeOther)
		return
	}
	u.render(w, http.StatusOK, "login", &view{Title: "Sign in"})
}

func (u *ui) login(w http.ResponseWriter, r *http.Request) {
	if status, msg := readForm(w, r); status != 0 {
		u.render(w, status, "login", &view{Title: "Sign in", Error: msg})
		return
	}
	if !loopbackRequest(r) && r.TLS == nil && r.Header.Get("X-Forwarded-Proto") != "https" {
		// The session cookie is Secure off loopback, and a browser keeps
		// none from plain HTTP: signing in would only lead back here.
		u.render(w, http.StatusForbidden, "login", &view{Title: "Sign in",
			Error: "sign-in needs HTTPS when the console is not on loopback: serve the admin listener behind a TLS proxy"})
		return
	}
	token := r.PostForm.Get("token")
	if token == "" || u.cfg.Operator == nil {
		u.render(w, http.StatusUnauthorized, "login", &view{Title: "Sign in", Error: "that is not an operator's token"})
		return
	}
	sum := sha256.Sum256([]byte(token))
	if _, _, ok := u.cfg.Operator(sum); !ok {
		u.render(w, http.StatusUnauthorized, "login", &view{Title: "Sign in", Error: "that is not an operator's token"})
		return
	}
	var raw [32]byte
	rand.Read(raw[:])
	id := base64.RawURLEncoding.EncodeToString(raw[:])
	now := time.Now()
	u.mu.Lock()
	// An operator holds at most maxOperatorSessions: signing in again
	// ends its own oldest, so that one operator signing in over and over
	// can't sign the others out. Past maxSessions in all, the oldest of
	// anyone's makes room.
	own, ownOldest, oldest := 0, "", ""
	for k, s := range u.sessions {
		if s.sum == sum {
			own++
			if ownOldest == "" || s.expires.Before(u.sessions[ownOldest].expires) {
				ownOldest = k
			}
		}
		if oldest == "" || s.expires.Before(u.sessions[oldest].expires) {
			oldest = k
		}
	}
	switch {
	case own >= maxOperatorSessions:
		delete(u.sessions, ownOldest)
	case len(u.sessions) >= maxSessions:
		delete(u.sessions, oldest)
	}
	u.sessions[id] = uiSession{sum: sum, expires: now.Add(sessionLifetime)}
	u.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", MaxAge: int(sessionLifetime / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: !loopbackRequest(r)})
	http.Redirect(w, r, "/live", http.StatusSeeOther)
}

func (u *ui) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		u.mu.Lock()
		delete(u.sessions, c.Value)
		u.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: !loopbackRequest(r)})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// loopbackRequest reports whether r came over loopback in plain HTTP,
// where a Secure cookie would never be sent back — not from a TLS proxy
// on the same host, whose browser must not send the cookie over plain
// HTTP to that host.
func loopbackRequest(r *http.Request) bool {
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
