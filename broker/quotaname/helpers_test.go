package quotaname

import (
	"encoding/json"
	"os"
	"testing"
)

// row is one row of the AWS General Reference quota table.
type row struct {
	Name       string `json:"name"`
	Default    string `json:"default"`
	Adjustable string `json:"adjustable"`
	Code       string `json:"code"`
	Desc       string `json:"desc"`
}

const quotaFile = "testdata/bedrock-general-reference-quotas-2025-06.json"

func loadRows(tb testing.TB) []row {
	tb.Helper()
	b, err := os.ReadFile(quotaFile)
	if err != nil {
		tb.Fatalf("read quota table: %v", err)
	}
	var rows []row
	if err := json.Unmarshal(b, &rows); err != nil {
		tb.Fatalf("decode %s: %v", quotaFile, err)
	}
	return rows
}

// loadCatalogue reads ListFoundationModels and ListInferenceProfiles
// responses, as AWS shapes them, from one file.
func loadCatalogue(tb testing.TB, path string) Catalogue {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read catalogue: %v", err)
	}
	var resp struct {
		ModelSummaries []struct {
			ModelID                 string   `json:"modelId"`
			ModelName               string   `json:"modelName"`
			ProviderName            string   `json:"providerName"`
			InferenceTypesSupported []string `json:"inferenceTypesSupported"`
		} `json:"modelSummaries"`
		InferenceProfileSummaries []struct {
			InferenceProfileID string `json:"inferenceProfileId"`
			Models             []struct {
				ModelArn string `json:"modelArn"`
			} `json:"models"`
			Type string `json:"type"`
		} `json:"inferenceProfileSummaries"`
	}
	if err := json.Unmarshal(b, &resp); err != nil {
		tb.Fatalf("decode catalogue %s: %v", path, err)
	}
	var cat Catalogue
	for _, m := range resp.ModelSummaries {
		cat.Models = append(cat.Models, Model{ID: m.ModelID, Name: m.ModelName, Provider: m.ProviderName, InferenceTypes: m.InferenceTypesSupported})
	}
	for _, p := range resp.InferenceProfileSummaries {
		pr := Profile{ID: p.InferenceProfileID, Type: p.Type}
		for _, m := range p.Models {
			pr.Models = append(pr.Models, m.ModelArn)
		}
		cat.Profiles = append(cat.Profiles, pr)
	}
	return cat
}
