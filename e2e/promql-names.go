// Command promql-names (built by e2e/testbin.sh, used by e2e/test_monitoring.py) reads PromQL
// expressions, one JSON string per line on stdin, parses each with Prometheus's own parser and
// prints, per line, a JSON object: the metric names the expression selects, or the parse error.
package main

import (
	"bufio"
	"encoding/json"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Names []string `json:"names"`
	Error string   `json:"error,omitempty"`
}

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for scanner.Scan() {
		var expr string
		if err := json.Unmarshal(scanner.Bytes(), &expr); err != nil {
			_ = out.Encode(result{Error: err.Error()})
			continue
		}
		parsed, err := parser.ParseExpr(expr)
		if err != nil {
			_ = out.Encode(result{Names: []string{}, Error: err.Error()})
			continue
		}
		seen := map[string]bool{}
		parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
			if selector, ok := node.(*parser.VectorSelector); ok {
				name := selector.Name
				for _, matcher := range selector.LabelMatchers {
					if matcher.Name == labels.MetricName && matcher.Type == labels.MatchEqual {
						name = matcher.Value
					}
				}
				seen[name] = true
			}
			return nil
		})
		names := []string{}
		for name := range seen {
			names = append(names, name)
		}
		sort.Strings(names)
		_ = out.Encode(result{Names: names})
	}
}
