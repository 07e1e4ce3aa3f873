// Command luaeval runs an Argo CD resource health check (Lua) against objects,
// the way Argo CD's controller does for a health.lua set in argocd-cm
// (resource.customizations.health.<group>_<kind>):
//
//   - the VM is gopher-lua, Argo CD's Lua VM;
//   - without -open-libs only the package, base and table libraries and an `os`
//     subset are loaded (Argo CD's default, resource.customizations.useOpenLibs
//     unset): a script that calls string.* or math.* fails here as it would there;
//   - the object is the global `obj` (JSON numbers become Lua numbers);
//   - the script must return a table whose status is one of Argo CD's health codes,
//     otherwise the result is Unknown with Argo CD's message;
//   - a script runs at most one second.
//
// Usage: luaeval [-open-libs] SCRIPT.lua < objects.json
// stdin is a JSON array of objects; stdout a JSON array of
// {"status": ..., "message": ...} or {"error": ...}, one per object, in order.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Argo CD's health codes (gitops-engine pkg/health).
var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

const invalidHealthStatus = "Lua returned an invalid health status"

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

// toLua converts a decoded JSON value to a Lua value (as Argo CD's decodeValue does).
func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		arr := L.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(L, item))
		}
		return arr
	case map[string]any:
		tbl := L.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), toLua(L, item))
		}
		return tbl
	}
	return lua.LNil
}

// osTime is the part of Argo CD's "safe" os library a health check may use.
func osTime(L *lua.LState) int {
	L.Push(lua.LNumber(time.Now().Unix()))
	return 1
}

func openSafeOs(L *lua.LState) int {
	mod := L.RegisterModule(lua.OsLibName, map[string]lua.LGFunction{"time": osTime})
	L.Push(mod)
	return 1
}

func newState(openLibs bool) *lua.LState {
	L := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	libs := []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	}
	for _, lib := range libs {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			panic(err)
		}
	}
	return L
}

func evaluate(script string, obj map[string]any, openLibs bool) result {
	L := newState(openLibs)
	defer L.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return result{Error: err.Error()}
	}
	ret := L.Get(-1)
	tbl, ok := ret.(*lua.LTable)
	if !ok {
		return result{Error: fmt.Sprintf("expect table output from Lua script, not %s", ret.Type().String())}
	}
	status, ok := tbl.RawGetString("status").(lua.LString)
	if !ok || !validStatus[string(status)] {
		return result{Status: "Unknown", Message: invalidHealthStatus}
	}
	out := result{Status: string(status)}
	switch msg := tbl.RawGetString("message").(type) {
	case lua.LString:
		out.Message = string(msg)
	case *lua.LNilType:
	default:
		return result{Error: fmt.Sprintf("message must be a string, not %s", msg.Type().String())}
	}
	return out
}

func main() {
	openLibs := flag.Bool("open-libs", false, "load every standard library (resource.customizations.useOpenLibs)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: luaeval [-open-libs] SCRIPT.lua < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var objects []map[string]any
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fmt.Fprintln(os.Stderr, "stdin: a JSON array of objects:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(objects))
	for _, obj := range objects {
		results = append(results, evaluate(string(script), obj, *openLibs))
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
