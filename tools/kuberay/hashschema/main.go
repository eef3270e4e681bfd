// Command hashschema writes, as JSON, the shape of the Go structs KubeRay
// v1.5 hashes a RayService's rayClusterConfig through (rayv1.RayClusterSpec
// and everything it holds): for each struct, its fields in declaration order
// with their JSON names and omitempty. rayform's Rust encoder
// (src/plan/kuberay_hash.rs) walks a planned spec along it to write the JSON
// encoding/json would, byte for byte, and so reach KubeRay's hash. Types that
// marshal themselves are named, never described; the encoder knows those few.
//
//	cd tools/kuberay && go run ./hashschema > ../../src/plan/kuberay_hash_schema.json
//
// With -encode it reads a rayClusterConfig (JSON) on stdin and writes what
// KubeRay hashes for it, then the hash: to see where the encoder differs.
package main

import (
	"crypto/sha1"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"

	rayv1 "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
)

type field struct {
	JSON      string `json:"json"`
	OmitEmpty bool   `json:"omitempty"`
	OmitZero  bool   `json:"omitzero"`
	Type      string `json:"type"`
}

var (
	structs   = map[string][]field{}
	marshaler = reflect.TypeOf((*json.Marshaler)(nil)).Elem()
	textMarsh = reflect.TypeOf((*interface{ MarshalText() ([]byte, error) })(nil)).Elem()
	problems  []string
)

// describe names a type as the encoder sees it: "string", "bool", "int",
// "uint", "float", "bytes", "ptr:T", "slice:T", "map:T", "struct:NAME" or
// "marshaler:NAME" (a type with its own MarshalJSON).
func describe(t reflect.Type) string {
	if t.Kind() == reflect.Pointer {
		return "ptr:" + describe(t.Elem())
	}
	if t.Implements(marshaler) || reflect.PointerTo(t).Implements(marshaler) {
		return "marshaler:" + t.PkgPath() + "." + t.Name()
	}
	if t.Implements(textMarsh) || reflect.PointerTo(t).Implements(textMarsh) {
		problems = append(problems, "text marshaler "+t.String())
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "int"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "uint"
	case reflect.Float32, reflect.Float64:
		return "float"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "bytes"
		}
		return "slice:" + describe(t.Elem())
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			problems = append(problems, "map key "+t.String())
		}
		return "map:" + describe(t.Elem())
	case reflect.Struct:
		name := t.PkgPath() + "." + t.Name()
		if _, seen := structs[name]; !seen {
			structs[name] = nil
			structs[name] = fields(t)
		}
		return "struct:" + name
	}
	problems = append(problems, "kind "+t.String())
	return "unsupported:" + t.String()
}

// fields lists a struct's encoded fields as encoding/json's typeFields does
// for the shapes Kubernetes uses: embedded structs without a JSON name are
// inlined (named ones, like ObjectMeta's `metadata`, are fields), `json:"-"` is skipped, unexported fields are not encoded.
func fields(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, fields(f.Type)...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		omit, zero := false, false
		for _, o := range strings.Split(opts, ",") {
			switch o {
			case "omitempty":
				omit = true
			case "omitzero":
				zero = true
			case "", "inline":
			default:
				problems = append(problems, "option "+o+" on "+t.String()+"."+f.Name)
			}
		}
		out = append(out, field{JSON: name, OmitEmpty: omit, OmitZero: zero, Type: describe(f.Type)})
	}
	return out
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-encode" {
		encode()
		return
	}
	root := describe(reflect.TypeOf(rayv1.RayClusterSpec{}))
	if len(problems) > 0 {
		fmt.Fprintln(os.Stderr, "hashschema: shapes the encoder does not know:", strings.Join(problems, "; "))
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(map[string]any{"root": root, "structs": structs}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// encode does what KubeRay's generateHashWithoutReplicasAndWorkersToDelete
// does, for a spec on stdin.
func encode() {
	var spec rayv1.RayClusterSpec
	if err := json.NewDecoder(os.Stdin).Decode(&spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i := range spec.WorkerGroupSpecs {
		spec.WorkerGroupSpecs[i].Replicas = nil
		spec.WorkerGroupSpecs[i].MaxReplicas = nil
		spec.WorkerGroupSpecs[i].MinReplicas = nil
		spec.WorkerGroupSpecs[i].ScaleStrategy.WorkersToDelete = nil
	}
	out, err := json.Marshal(spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sum := sha1.Sum(out)
	fmt.Printf("%s\n%s\n", out, base32.HexEncoding.EncodeToString(sum[:]))
}
