package mcpgate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/agentsec/agentsec"
)

// Tasks (MCP 2025-11-25) are governed, not just relayed. A task-augmented
// tools/call is a governed call like any other — trust, a call slot, one
// record — whose answer is a receipt; the tool's real result comes later,
// through tasks/result. So the gateway keeps the tasks each session
// created, and:
//
//   - tasks/get, tasks/result and tasks/cancel name only a task of the
//     session's own; any other task id is unknown (-32602);
//   - tasks/result is delivered once: its tokens are counted then
//     (Stack.DeliverResult, a "tool.result" record) under the rules a
//     call's result has — the per-call ceiling, the session's token
//     limit — and a second fetch is refused;
//   - tasks/list shows only the session's tasks.
//
// Tasks stay with the replica their session created them on, as its
// upstream connections do: another replica taking the session up knows
// none of them.

// maxTasks bounds the tasks a session keeps; past it, a task-augmented
// call is refused until results are fetched.
const maxTasks = 1024

// task is one task a session created.
type task struct {
	up    *upstreamConn
	tool  string // as the client named it, for the records
	state taskState
}

type taskState int

const (
	taskPending   taskState = iota // its result not fetched yet
	taskFetching                   // a tasks/result is on its way
	taskDelivered                  // its result was delivered, or withheld
)

// taskReceipt returns the task id of a CreateTaskResult, the answer to a
// task-augmented request; ok is false for any other result.
func taskReceipt(result json.RawMessage) (id string, ok bool) {
	if !bytes.Contains(result, []byte(`"taskId"`)) {
		return "", false // not one: no need to decode every result
	}
	m := object(result)
	if m == nil {
		return "", false
	}
	if _, hasContent := m["content"]; hasContent {
		return "", false
	}
	id = stringField(object(m["task"]), "taskId")
	return id, id != ""
}

// wantsTask reports whether a tools/call asks to run as a task.
func wantsTask(params map[string]json.RawMessage) bool {
	_, ok := params["task"]
	return ok
}

// roomForTask reports whether the session may create another task.
func (r *router) roomForTask() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.makeRoomLocked()
}

// makeRoomLocked makes room for a task if the table is full, forgetting
// one whose result was delivered, and reports whether there is room.
func (r *router) makeRoomLocked() bool {
	if len(r.tasks) < maxTasks {
		return true
	}
	for id, t := range r.tasks {
		if t.state == taskDelivered {
			delete(r.tasks, id)
			return true
		}
	}
	return false
}

// addTask records a task u created for the session. A task id the session
// holds already — from another upstream — is an error: requests for it
// could not be routed; so is a full table (calls that were all let in at
// once).
func (r *router) addTask(id string, u *upstreamConn, tool string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tasks == nil {
		r.tasks = map[string]*task{}
	}
	if _, dup := r.tasks[id]; dup {
		return fmt.Errorf("the MCP server %q created a task whose id %q this session holds already", u.Name, id)
	}
	if !r.makeRoomLocked() {
		return fmt.Errorf("the MCP server %q created a task past the %d whose results the session has not fetched", u.Name, maxTasks)
	}
	r.tasks[id] = &task{up: u, tool: tool}
	return nil
}

// ownTask returns the session's task a request names, the params to send
// its upstream, or the error to answer with. The params are re-encoded
// from what was read, with exactly one "taskId": a server that reads
// keys without regard to case must find only the task checked.
func (r *router) ownTask(raw json.RawMessage) (string, *task, json.RawMessage, *jsonrpc.Error) {
	params := object(raw)
	id := stringField(params, "taskId")
	if id == "" {
		return "", nil, nil, &jsonrpc.Error{Code: codeInvalidParams, Message: "agentsec: the request needs params with a taskId"}
	}
	r.mu.Lock()
	t := r.tasks[id]
	r.mu.Unlock()
	if t == nil {
		return id, nil, nil, &jsonrpc.Error{Code: codeInvalidParams,
			Message: fmt.Sprintf("agentsec: unknown task %q: a session reaches only the tasks it created", id)}
	}
	onlyExactKeys(params, "taskId")
	upParams, _ := json.Marshal(params)
	return id, t, upParams, nil
}

// taskRequest relays tasks/get or tasks/cancel for one of the session's
// tasks to the upstream that has it.
func (r *router) taskRequest(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	_, t, params, werr := r.ownTask(req.Params)
	if werr != nil {
		r.reply(ctx, cr, req.ID, &jsonrpc.Response{Error: werr})
		return
	}
	r.forward(ctx, req, cr, t.up, params, nil)
}

// taskResult relays tasks/result once per task, counting and recording
// the result before it is delivered.
func (r *router) taskResult(ctx context.Context, req *jsonrpc.Request, cr *clientRequest) {
	id, t, params, werr := r.ownTask(req.Params)
	if werr != nil {
		r.reply(ctx, cr, req.ID, &jsonrpc.Response{Error: werr})
		return
	}
	r.mu.Lock()
	state := t.state
	if state == taskPending {
		t.state = taskFetching
	}
	r.mu.Unlock()
	switch state {
	case taskFetching:
		r.replyError(ctx, cr, req.ID, codeInvalidRequest, fmt.Sprintf("agentsec: the result of task %q is being fetched already", id))
		return
	case taskDelivered:
		r.replyError(ctx, cr, req.ID, codeInvalidRequest, fmt.Sprintf("agentsec: the result of task %q was delivered already; a task's result is delivered once", id))
		return
	}
	settle := func(s taskState) {
		r.mu.Lock()
		t.state = s
		r.mu.Unlock()
	}
	resp, err := t.up.exchange(ctx, req.Method, params, progressToken(req.Params),
		func(upID int64) bool { return r.sent(cr, t.up, upID) })
	if err != nil {
		settle(taskPending) // no answer came: it may be fetched again
		r.replyFailure(ctx, cr, req.ID, err)
		return
	}
	// An answer, a result or an error, is the task's outcome: delivered
	// once, and counted.
	settle(taskDelivered)
	var tokens int64
	if resp.Error != nil {
		tokens = r.errorTokens(resp.Error)
	} else if tokens, err = r.tokens.CountResult(resp.Result); err != nil {
		r.replyError(ctx, cr, req.ID, codeInternal, "agentsec: the task's result could not be counted: "+err.Error())
		return
	}
	attrs := maps.Clone(r.attrs(ctx))
	if attrs == nil {
		attrs = map[string]string{}
	}
	attrs["task"] = id
	call := agentsec.Request{Agent: r.p.Agent, Session: r.session, Tool: t.tool, Attrs: attrs}
	if err := r.p.Stack.DeliverResult(ctx, call, tokens); err != nil {
		if denied, ok := errors.AsType[*agentsec.DeniedError](err); ok {
			r.reply(ctx, cr, req.ID, deniedResult(denied))
			return
		}
		r.replyFailure(ctx, cr, req.ID, err)
		return
	}
	r.reply(ctx, cr, req.ID, resp)
}

// ownsTask reports whether the session created the task an item of a
// tasks/list page names.
func (r *router) ownsTask(item map[string]json.RawMessage) bool {
	id := stringField(item, "taskId")
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tasks[id] != nil
}
