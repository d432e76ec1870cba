package awsquota

import (
	"fmt"
	"strings"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
)

// provisionedSpecs sizes the InService throughputs whose model has a rate
// per model unit: a budget keyed by the throughput's ARN, serving its
// model, of units x rate tokens per minute. A throughput whose ARN or
// model cannot be read is a note, not a budget.
func provisionedSpecs(pts []broker.ProvisionedThroughput, rates map[string]int64, at time.Time) ([]broker.Spec, []string) {
	var specs []broker.Spec
	var notes []string
	for _, p := range pts {
		model := p.Model[strings.LastIndex(p.Model, "/")+1:]
		rate, ok := rates[model]
		if !ok || p.Status != "InService" {
			continue
		}
		key, err := broker.ParseModelID(p.ARN, p.Region, p.Region)
		if err != nil || key.Scope != broker.ScopeProvisioned || p.ModelUnits <= 0 {
			notes = append(notes, fmt.Sprintf("provisioned throughput %q in %s (%d model units): no budget, its ARN or units cannot be read: %v", p.ARN, p.Region, p.ModelUnits, err))
			continue
		}
		specs = append(specs, broker.Spec{
			Key:        key,
			Quota:      broker.Limits{TPM: p.ModelUnits * rate},
			Serves:     model,
			Source:     fmt.Sprintf("aws:provisioned:%s (%d model units x %d tokens per minute per unit)", p.Region, p.ModelUnits, rate),
			SourceTime: at,
		})
	}
	return specs, notes
}
