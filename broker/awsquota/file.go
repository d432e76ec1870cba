package awsquota

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/bedrockqb/quotabroker/broker"
	"github.com/bedrockqb/quotabroker/broker/quotaname"
)

// Files names saved AWS CLI outputs for offline discovery of one Region.
type Files struct {
	// Region the files were saved from; it keys the budgets.
	Region string
	// Quotas is the output of
	//   aws service-quotas list-service-quotas --service-code bedrock
	// (or list-aws-default-service-quotas): {"Quotas": [...]}. Required.
	Quotas string
	// Models is the output of aws bedrock list-foundation-models
	// ({"modelSummaries": [...]}), optional. Without it nothing is
	// matched: quotas are classified and shown with reason "no catalogue
	// given". The file may also hold "inferenceProfileSummaries".
	Models string
	// Profiles is the output of aws bedrock list-inference-profiles
	// ({"inferenceProfileSummaries": [...]}), optional. Without it
	// cross-region and global quotas find no profile.
	Profiles string
	// Now stamps the result; nil means time.Now.
	Now func() time.Time
}

// cliQuota is a ServiceQuota as the AWS CLI prints it: the API's member
// names (awsJson1_1 puts them on the wire as they are).
type cliQuota struct {
	ServiceCode string   `json:"ServiceCode"`
	QuotaCode   string   `json:"QuotaCode"`
	QuotaName   string   `json:"QuotaName"`
	Value       *float64 `json:"Value"`
	Adjustable  bool     `json:"Adjustable"`
	GlobalQuota bool     `json:"GlobalQuota"`
	ErrorReason *struct {
		ErrorCode    string `json:"ErrorCode"`
		ErrorMessage string `json:"ErrorMessage"`
	} `json:"ErrorReason"`
}

// cliCatalogue is list-foundation-models and list-inference-profiles
// output (restJson1: lower camel case), either or both in one file.
type cliCatalogue struct {
	ModelSummaries []struct {
		ModelID                 string   `json:"modelId"`
		ModelName               string   `json:"modelName"`
		ProviderName            string   `json:"providerName"`
		InferenceTypesSupported []string `json:"inferenceTypesSupported"`
	} `json:"modelSummaries"`
	InferenceProfileSummaries []struct {
		InferenceProfileID string `json:"inferenceProfileId"`
		Type               string `json:"type"`
		Models             []struct {
			ModelArn string `json:"modelArn"`
		} `json:"models"`
	} `json:"inferenceProfileSummaries"`
}

// FromFiles builds the discovery of one Region from saved AWS CLI outputs,
// with no AWS call: for trying the broker's reading of an account's quotas
// before giving it credentials, and for golden tests.
func FromFiles(f Files) (Result, error) {
	if !broker.ValidRegion(f.Region) {
		return Result{}, fmt.Errorf("offline discovery: %q is not an AWS Region name", f.Region)
	}
	if f.Quotas == "" {
		return Result{}, errors.New("offline discovery: no quotas file given")
	}
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	at := now()
	b, err := os.ReadFile(f.Quotas)
	if err != nil {
		return Result{}, fmt.Errorf("read quotas file: %w", err)
	}
	var qs []cliQuota
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		err = json.Unmarshal(b, &qs)
	} else {
		var out struct {
			Quotas *[]cliQuota `json:"Quotas"`
		}
		err = json.Unmarshal(b, &out)
		if err == nil && out.Quotas == nil {
			err = errors.New(`no "Quotas" array; expected the output of aws service-quotas list-service-quotas --service-code bedrock`)
		}
		if out.Quotas != nil {
			qs = *out.Quotas
		}
	}
	if err != nil {
		return Result{}, fmt.Errorf("read quotas file %s: %w", f.Quotas, err)
	}
	rows := make([]row, 0, len(qs))
	for _, q := range qs {
		r := row{code: q.QuotaCode, name: q.QuotaName, value: q.Value, adjustable: q.Adjustable, global: q.GlobalQuota, source: sourceFile, at: at}
		if e := q.ErrorReason; e != nil {
			r.errorReason = e.ErrorCode + ": " + e.ErrorMessage
		}
		rows = append(rows, r)
	}
	rows = mergeRows(rows, nil)

	var cat *quotaname.Catalogue
	if f.Models != "" || f.Profiles != "" {
		cat = &quotaname.Catalogue{}
		for _, p := range []string{f.Models, f.Profiles} {
			if p == "" {
				continue
			}
			if err := readCatalogue(p, cat); err != nil {
				return Result{}, err
			}
		}
		if len(cat.Models) == 0 {
			// Profiles alone identify no model: say so rather than
			// reporting every quota as of an unknown provider.
			cat = nil
		}
	}
	return build(f.Region, "file:"+f.Quotas, at, rows, cat), nil
}

func readCatalogue(path string, cat *quotaname.Catalogue) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read catalogue file: %w", err)
	}
	var c cliCatalogue
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("read catalogue file %s: %w", path, err)
	}
	if c.ModelSummaries == nil && c.InferenceProfileSummaries == nil {
		return fmt.Errorf("read catalogue file %s: neither \"modelSummaries\" nor \"inferenceProfileSummaries\"; expected aws bedrock list-foundation-models or list-inference-profiles output", path)
	}
	for _, m := range c.ModelSummaries {
		cat.Models = append(cat.Models, quotaname.Model{ID: m.ModelID, Name: m.ModelName, Provider: m.ProviderName, InferenceTypes: m.InferenceTypesSupported})
	}
	for _, p := range c.InferenceProfileSummaries {
		if p.Type != "" && p.Type != "SYSTEM_DEFINED" {
			continue // see fetchCatalogue
		}
		pp := quotaname.Profile{ID: p.InferenceProfileID, Type: p.Type}
		for _, m := range p.Models {
			pp.Models = append(pp.Models, m.ModelArn)
		}
		cat.Profiles = append(cat.Profiles, pp)
	}
	return nil
}
