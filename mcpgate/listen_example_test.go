package mcpgate_test

import (
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/agentsec/agentsec/mcpgate"
)

// A server whose listener holds one connection per client address: while
// an idle connection holds the place of 127.0.0.1, a request from there is
// refused with 429; once it closes, the place is free again.
func ExampleLimitListener() {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := mcpgate.LimitListener(tcp, mcpgate.ListenerLimits{MaxConnections: 100, MaxConnectionsPerAddress: 1,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello\n") }),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go srv.Serve(ln)
	defer srv.Close()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() (int, string) {
		resp, err := client.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(body))
	}
	// Connections are accepted in the order they came: the idle one
	// takes the place before the request's.
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(get())
	idle.Close()
	for {
		// The server frees the place when it sees the connection closed.
		if code, body := get(); code == http.StatusOK {
			fmt.Println(code, body)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Output:
	// 429 agentsec: too many connections from your address (the most is 1); close idle ones, or retry later
	// 200 hello
}
