package config

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"gopkg.in/yaml.v3"
)

var (
	linuxResourcesType = reflect.TypeFor[specs.LinuxResources]()
	linuxMemoryType    = reflect.TypeFor[specs.LinuxMemory]()
)

// memorySizeKeys are the LinuxMemory fields that also take a size string
// ("256Mi"), a convenience over the spec's plain byte counts.
var memorySizeKeys = map[string]bool{"limit": true, "reservation": true, "swap": true}

// resources decodes one resources group. The YAML subtree is first walked
// against the Go type of specs.LinuxResources, so an unknown field or a
// wrong type is reported at its own line with the valid field names; the
// checked tree is then converted to JSON and decoded with the spec's own
// JSON tags, exactly as a runtime would read config.json.
func (d *decoder) resources(dst **specs.LinuxResources) func(string, *yaml.Node) {
	return func(path string, n *yaml.Node) {
		before := len(d.errs)
		v := d.jsonValue(path, n, linuxResourcesType, false)
		if len(d.errs) > before {
			return
		}
		data, err := json.Marshal(v)
		if err != nil {
			d.errorf(n.Line, path, "cannot convert to JSON: %v", err)
			return
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		var r specs.LinuxResources
		if err := dec.Decode(&r); err != nil {
			d.errorf(n.Line, path, "not a valid OCI runtime-spec LinuxResources: %v; see the \"resources\" section of the runtime-spec config-linux.md", err)
			return
		}
		*dst = &r
	}
}

// jsonField is one JSON-visible field of a struct, in declaration order.
type jsonField struct {
	name string
	typ  reflect.Type
}

// jsonFields lists the fields encoding/json would use for t, following
// embedded structs the way encoding/json promotes their fields.
func jsonFields(t reflect.Type) []jsonField {
	var out []jsonField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, jsonField{name, f.Type})
	}
	return out
}

// jsonValue checks node n against Go type t and returns the equivalent JSON
// value (map[string]any, []any, string, bool, json.Number or nil). Errors
// are recorded on d; the returned value is then meaningless. sizeOK allows
// a size string for an integer field.
func (d *decoder) jsonValue(path string, n *yaml.Node, t reflect.Type, sizeOK bool) any {
	n = resolve(n)
	if isNull(n) {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		fields := jsonFields(t)
		names := make([]string, len(fields))
		for i, f := range fields {
			names[i] = f.name
		}
		if n.Kind != yaml.MappingNode {
			d.errorf(n.Line, path, "expected a mapping with keys %s, got %s", strings.Join(names, ", "), describe(n))
			return nil
		}
		out := map[string]any{}
		d.pairs(path, n, func(key string, k, v *yaml.Node) {
			for _, f := range fields {
				if f.name == key {
					p := join(path, key)
					d.lines[p] = v.Line
					out[key] = d.jsonValue(p, v, f.typ, t == linuxMemoryType && memorySizeKeys[key])
					return
				}
			}
			d.unknownKey(path, k, names)
		})
		return out
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.errorf(n.Line, path, "expected a mapping, got %s", describe(n))
			return nil
		}
		out := map[string]any{}
		d.pairs(path, n, func(key string, k, v *yaml.Node) {
			p := join(path, key)
			d.lines[p] = v.Line
			out[key] = d.jsonValue(p, v, t.Elem(), false)
		})
		return out
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n.Line, path, "expected a list, got %s", describe(n))
			return nil
		}
		out := make([]any, len(n.Content))
		for i, item := range n.Content {
			p := index(path, i)
			d.lines[p] = item.Line
			out[i] = d.jsonValue(p, item, t.Elem(), false)
		}
		return out
	case reflect.String:
		s, _ := d.scalarText(path, n)
		return s
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.errorf(n.Line, path, "expected true or false, got %s", describe(n))
		}
		return b
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if sizeOK && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			s, _ := d.sizeNode(path, n)
			return json.Number(strconv.FormatInt(int64(s), 10))
		}
		var v int64
		if !d.intNode(path, n, sizeOK, &v) {
			return nil
		}
		if reflect.Zero(t).OverflowInt(v) {
			d.errorf(n.Line, path, "%s is out of range for this field", n.Value)
		}
		return json.Number(strconv.FormatInt(v, 10))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" && strings.HasPrefix(n.Value, "-") {
			d.errorf(n.Line, path, "must not be negative, got %s", n.Value)
			return nil
		}
		var u uint64
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" && n.Decode(&u) == nil {
			if reflect.Zero(t).OverflowUint(u) {
				d.errorf(n.Line, path, "%s is out of range for this field", n.Value)
			}
			return json.Number(strconv.FormatUint(u, 10))
		}
		var v int64
		d.intNode(path, n, false, &v) // not an integer, or too large: reports why
		return nil
	case reflect.Float32, reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&f) != nil {
			d.errorf(n.Line, path, "expected a number, got %s", describe(n))
			return nil
		}
		return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
	}
	d.errorf(n.Line, path, "berth cannot read this field (Go type %s)", t)
	return nil
}

// intNode decodes an integer node into v, reporting anything else.
func (d *decoder) intNode(path string, n *yaml.Node, sizeOK bool, v *int64) bool {
	if sizeOK && (n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int") {
		d.errorf(n.Line, path, "expected bytes or a size such as 256Mi, got %s", describe(n))
		return false
	}
	x, ok := d.whole(path, n)
	*v = x
	return ok
}
